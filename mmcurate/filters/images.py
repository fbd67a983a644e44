"""Decoding stored image bytes for the filters that look at pixels."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps


def decode_rgb(data: bytes | None) -> np.ndarray:
    """An RGB uint8 array (EXIF orientation applied); raises on anything undecodable."""
    if not data:
        raise ValueError("no image bytes")
    with Image.open(io.BytesIO(data)) as img:
        img = ImageOps.exif_transpose(img)
        return np.asarray(img.convert("RGB"))


def encode(rgb: np.ndarray, fmt: str | None) -> bytes:
    """Encode an RGB array in the stored format (jpg, png or webp) at high quality."""
    fmt = (fmt or "jpg").lower()
    pil = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}.get(fmt, "JPEG")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, pil, **({"quality": 95} if pil in ("JPEG", "WEBP") else {}))
    return buf.getvalue()
