"""The near-duplicate evaluation set: real photographs from scikit-image's wheel.

Distinct images are crops at distinct positions of each photo; near-duplicates are the usual
web transformations of a distinct image. `hard_negatives` adds distinct images that hashes
confuse: overlapping crops of one photograph, shifted by 15-40 % of their side, taken where it
is dominated by a flat region (sky, a wall, a colour chart), mined so that their pHash or dHash
distance, on the images as the download stage stores them, is within 16. Every row carries the id of the distinct image it shows, so precision and
recall can be computed from a run's ledger.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from mmcurate.demo import PHOTOS, _photo_dir

POSITIONS = [(0.0, 0.0), (0.45, 0.0), (0.0, 0.45), (0.45, 0.45), (0.22, 0.22), (0.45, 0.22)]  # build's crops, 0.55 a side
SKIP = {"logo.png", "chessboard_GRAY.png", "chessboard_RGB.png", "horse.png", "phantom.png"}


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def transforms(rng: np.random.Generator):
    """Web transformations: (name, fn(img) -> encoded bytes)."""

    def border_crop(img):
        w, h = img.size
        f = rng.uniform(0.02, 0.05)
        dx, dy = int(w * f), int(h * f)
        return _jpeg(img.crop((dx, dy, w - dx, h - dy)))

    def watermark(img):
        img = img.copy()
        w, h = img.size
        ImageDraw.Draw(img).text((int(w * 0.6), int(h * 0.88)), "(c) stock", fill=(255, 255, 255))
        return _jpeg(img)

    return [
        ("jpeg_q30", lambda img: _jpeg(img, 30)),
        ("jpeg_q50", lambda img: _jpeg(img, 50)),
        ("jpeg_q75", lambda img: _jpeg(img, 75)),
        ("resize_down", lambda img: _jpeg(img.resize((img.width // 2, img.height // 2), Image.Resampling.BILINEAR))),
        ("resize_up", lambda img: _jpeg(img.resize((int(img.width * 1.5), int(img.height * 1.5)), Image.Resampling.BICUBIC))),
        ("border_crop", border_crop),
        ("brighter", lambda img: _jpeg(ImageEnhance.Brightness(img).enhance(1.2))),
        ("darker", lambda img: _jpeg(ImageEnhance.Brightness(img).enhance(0.8))),
        ("contrast", lambda img: _jpeg(ImageEnhance.Contrast(img).enhance(1.25))),
        ("blur", lambda img: _jpeg(img.filter(ImageFilter.GaussianBlur(1.0)))),
        ("watermark", watermark),
        ("as_png", _png),
    ]


def _photos():
    """(file name, RGB image) of each photograph the set uses."""
    folder = _photo_dir()
    for name in PHOTOS:
        if name not in SKIP and (folder / name).exists():
            with Image.open(folder / name) as im:
                yield name, im.convert("RGB")


def _with_copies(gid: str, crop: Image.Image, ops, rng, copies: int, quality: int = 92) -> list[tuple[str, bytes, str]]:
    """A distinct image and `copies` of its web transformations, each named and labelled `gid`."""
    out = [(f"{gid}.jpg", _jpeg(crop, quality), gid)]
    for t in rng.choice(len(ops), size=copies, replace=False):
        label, fn = ops[t]
        out.append((f"{gid}-{label}.{'png' if label == 'as_png' else 'jpg'}", fn(crop), gid))
    return out


def build(seed: int = 0, crops_per_photo: int = 6, copies: int = 3) -> list[tuple[str, bytes, str]]:
    """(name, encoded bytes, distinct-image id) for every image of the set."""
    rng = np.random.default_rng(seed)
    ops = transforms(rng)
    out: list[tuple[str, bytes, str]] = []
    for name, photo in _photos():
        w, h = photo.size
        for c, (fx, fy) in enumerate(POSITIONS[:crops_per_photo]):
            box = (int(w * fx), int(h * fy), int(w * (fx + 0.55)), int(h * (fy + 0.55)))
            crop = photo.crop(box)
            scale = 320 / min(crop.size)
            crop = crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.Resampling.LANCZOS)
            out += _with_copies(f"{Path(name).stem}-{c}", crop, ops, rng, copies)
    return out


def _hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def hard_negatives(seed: int = 0, pairs_per_photo: int = 3, copies: int = 2, tries: int = 300,
                   max_hash_distance: int = 16) -> list[tuple[str, bytes, str]]:
    """Pairs of distinct overlapping crops of flat-dominated regions, each with `copies` web
    transformations. A crop is distinct from every other of its photo (this set's and `build`'s):
    its centre is at least 15 % of the side away, or its size differs by over 25 %."""
    from mmcurate.filters.image_hash import signals
    from mmcurate.schemas.config import config_from_dict
    from mmcurate.stages.download import ImageCheck

    store = ImageCheck(config_from_dict({"input": {"path": "x"}}).download)  # as the download stage stores it
    rng = np.random.default_rng(seed)
    ops = transforms(rng)
    out: list[tuple[str, bytes, str]] = []
    for name, photo in _photos():
        w, h = photo.size
        grey = np.asarray(photo.convert("L").resize((64, 64)), np.float32)
        taken = [(fx, fy, 0.55) for fx, fy in POSITIONS]

        def apart(x: float, y: float, side: float) -> bool:
            return all(np.hypot(x + side / 2 - tx - ts / 2, y + side / 2 - ty - ts / 2) >= 0.15 * min(side, ts)
                       or max(side, ts) > 1.25 * min(side, ts) for tx, ty, ts in taken)

        found = 0
        for _ in range(tries):
            if found == pairs_per_photo:
                break
            side = rng.uniform(0.3, 0.7)
            x, y = rng.uniform(0, 1 - side, 2)
            if grey[int(64 * y):int(64 * (y + side)), int(64 * x):int(64 * (x + side))].std() > 25:
                continue  # not dominated by a flat region
            shift, angle = rng.uniform(0.15, 0.4) * side, rng.uniform(0, 2 * np.pi)
            x2, y2 = np.clip(x + shift * np.cos(angle), 0, 1 - side), np.clip(y + shift * np.sin(angle), 0, 1 - side)
            if np.hypot(x2 - x, y2 - y) < 0.15 * side or not (apart(x, y, side) and apart(x2, y2, side)):
                continue
            crops = [photo.crop((int(w * a), int(h * b), int(w * (a + side)), int(h * (b + side))))
                     .resize((320, 320), Image.Resampling.LANCZOS) for a, b in ((x, y), (x2, y2))]
            sa, sb = (signals(store(_jpeg(c, 92)).image) for c in crops)  # hashed as dedup sees them
            if min(_hamming(sa.phash, sb.phash), _hamming(sa.dhash, sb.dhash)) > max_hash_distance:
                continue  # the hashes tell them apart: not a hard negative
            for c, crop in enumerate(crops):
                out += _with_copies(f"{Path(name).stem}-n{found}{'ab'[c]}", crop, ops, rng, copies)
            found += 1
            taken += [(x, y, side), (x2, y2, side)]
    return out


def precision_recall(ledger: list[dict], group_of_url: dict[str, str]) -> dict:
    """Removal precision and recall of duplicate drops, from ledger rows."""
    uid_group = {r["uid"]: group_of_url[r["url"]] for r in ledger}
    sizes: dict[str, int] = {}
    for r in ledger:
        if r["status"] != "failed":
            sizes[uid_group[r["uid"]]] = sizes.get(uid_group[r["uid"]], 0) + 1
    redundant = sum(s - 1 for s in sizes.values())
    dropped = [r for r in ledger if r["reason"] in ("exact_duplicate", "near_duplicate")]
    true = [r for r in dropped if uid_group[r["scores"]["dup_of"]] == uid_group[r["uid"]]]
    return {
        "images": len(ledger),
        "distinct": len(sizes),
        "redundant": redundant,
        "dropped": len(dropped),
        "precision": len(true) / len(dropped) if dropped else 1.0,
        "recall": len(true) / redundant if redundant else 1.0,
        "false_drops": sorted((r["url"].rsplit("/", 1)[-1], r["detail"]) for r in dropped if r not in true),
    }
