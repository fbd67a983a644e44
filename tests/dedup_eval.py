"""The near-duplicate evaluation set: real photographs from scikit-image's wheel.

Distinct images are crops at distinct positions of each photo; near-duplicates are the usual
web transformations of a distinct image. Every row carries the id of the distinct image it
shows, so precision and recall can be computed from a run's ledger.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from mmcurate.demo import PHOTOS, _photo_dir

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


def build(seed: int = 0, crops_per_photo: int = 6, copies: int = 3) -> list[tuple[str, bytes, str]]:
    """(name, encoded bytes, distinct-image id) for every image of the set."""
    rng = np.random.default_rng(seed)
    ops = transforms(rng)
    out: list[tuple[str, bytes, str]] = []
    folder = _photo_dir()
    positions = [(0.0, 0.0), (0.45, 0.0), (0.0, 0.45), (0.45, 0.45), (0.22, 0.22), (0.45, 0.22)]
    for name in PHOTOS:
        if name in SKIP or not (folder / name).exists():
            continue
        with Image.open(folder / name) as im:
            photo = im.convert("RGB")
        w, h = photo.size
        for c, (fx, fy) in enumerate(positions[:crops_per_photo]):
            box = (int(w * fx), int(h * fy), int(w * (fx + 0.55)), int(h * (fy + 0.55)))
            crop = photo.crop(box)
            scale = 320 / min(crop.size)
            crop = crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.Resampling.LANCZOS)
            gid = f"{Path(name).stem}-{c}"
            out.append((f"{gid}.jpg", _jpeg(crop, 92), gid))
            for t in rng.choice(len(ops), size=copies, replace=False):
                label, fn = ops[t]
                data = fn(crop)
                ext = "png" if label == "as_png" else "jpg"
                out.append((f"{gid}-{label}.{ext}", data, gid))
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
