"""The demo's photographs: real ones from scikit-image's wheel, each with the caption the demo gives it."""

from __future__ import annotations

from pathlib import Path

PHOTOS = {
    "astronaut.png": "an astronaut in a white spacesuit in front of a flag",
    "brick.png": "a wall of bricks",
    "camera.png": "a man with a camera on a tripod, black and white",
    "cell.png": "cells under a microscope",
    "chelsea.png": "a tabby cat looking at the camera",
    "clock_motion.png": "a wall clock blurred by motion",
    "coffee.png": "a cup of coffee on a saucer",
    "coins.png": "old coins on a dark background",
    "color.png": "a chart of colour patches",
    "grass.png": "a close-up of green grass",
    "gravel.png": "a close-up of grey gravel",
    "horse.png": "the silhouette of a horse",
    "hubble_deep_field.jpg": "galaxies in the Hubble deep field",
    "ihc.png": "a stained tissue sample under a microscope",
    "logo.png": "a logo of a snake drawn in blue and yellow",
    "moon.png": "the cratered surface of the moon",
    "motorcycle_left.png": "a motorcycle parked in a workshop",
    "page.png": "a scanned page of printed text",
    "retina.jpg": "a photograph of a human retina",
    "rocket.jpg": "a rocket standing on its launch pad",
    "text.png": "handwritten text on a sheet of paper",
    "phantom.png": "a medical imaging test phantom",
}


def _photo_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def load_photos() -> list:
    """The sample's photographs as RGB PIL images (those present in the installed wheel)."""
    from PIL import Image

    photos = []
    for name in PHOTOS:
        path = _photo_dir() / name
        if path.exists():
            with Image.open(path) as im:
                photos.append(im.convert("RGB"))
    return photos


def random_crop(photo, rng, smallest: float):
    """A crop of `photo` covering a random fraction (smallest..1) of each side, at a random place."""
    w, h = photo.size
    cw, ch = int(w * rng.uniform(smallest, 1.0)), int(h * rng.uniform(smallest, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return photo.crop((x, y, x + cw, y + ch))
