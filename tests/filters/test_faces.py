"""Faces: CenterFace (and the Haar fallback) on scikit-image's real faces and face-free photos; the blur."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from mmcurate.filters import faces

FACE_FREE = ("coffee", "chelsea", "rocket", "coins", "page", "text", "grass", "brick", "moon")


def rgb(name: str, size=(320, 240)) -> np.ndarray:
    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return np.asarray(Image.fromarray(img[..., :3]).resize(size))


@pytest.fixture(scope="module")
def centerface():
    return faces.FaceDetector(*faces.resolve("centerface", None))


def lfw_faces(start: int, stop: int) -> list[np.ndarray]:
    """scikit-image's 25x25 LFW crops (0-99 faces, 100-199 not), upscaled onto a grey canvas."""
    crops = data.lfw_subset()
    out = []
    for crop in crops[start:stop]:
        face = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize((100, 100), Image.BICUBIC))
        canvas = np.full((160, 160, 3), 128, np.uint8)
        canvas[30:130, 30:130] = face[..., None]
        out.append(canvas)
    return out


def test_centerface_finds_the_real_faces(centerface):
    for name, size in (("astronaut", (320, 240)), ("astronaut", (256, 256)), ("camera", (200, 300))):
        found = centerface.detect(rgb(name, size))
        assert len(found) == 1, (name, size, found)
    hits = sum(bool(centerface.detect(img)) for img in lfw_faces(0, 100))
    misses = sum(bool(centerface.detect(img)) for img in lfw_faces(100, 200))
    assert hits >= 95 and misses <= 5, (hits, misses)


def test_centerface_leaves_face_free_photos_alone(centerface):
    # sizes vary on purpose: the detector must not carry state from one input size to the next
    for i, name in enumerate(FACE_FREE):
        assert centerface.detect(rgb(name, (256 + 32 * (i % 3), 256 - 16 * (i % 2)))) == [], name


def test_haar_fallback_finds_the_astronaut():
    haar = faces.FaceDetector(*faces.resolve("haar", None))
    assert len(haar.detect(rgb("astronaut", (512, 512)))) >= 1
    assert haar.detect(rgb("coffee")) == []


def test_blur_hides_the_face_and_nothing_else(centerface):
    image = rgb("astronaut", (256, 256))
    found = centerface.detect(image)
    out = faces.blur(image, found)
    f = found[0]
    face_before = image[f.y1:f.y2, f.x1:f.x2].astype(float)
    face_after = out[f.y1:f.y2, f.x1:f.x2].astype(float)
    # detail (high frequencies) inside the box is gone; far from it the pixels are unchanged
    detail = lambda a: np.abs(np.diff(a, axis=1)).mean()
    assert detail(face_after) < 0.5 * detail(face_before)
    assert np.array_equal(out[200:, :60], image[200:, :60])
    assert centerface.detect(out) == [] or centerface.detect(out)[0].score < found[0].score
    assert np.array_equal(image, rgb("astronaut", (256, 256)))  # the input is not modified
