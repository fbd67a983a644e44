"""Perceptual hashes and cheap image signals from one decode of the stored bytes.

`exact=True` gives pHash bit-identical to `imagehash.phash` (same conversion, same Lanczos
resize, same scipy DCT). The fast path decodes JPEGs at a reduced DCT scale (PIL draft mode,
keeping at least 2x the pixels the hash needs) and takes the DCT as two small matrix products;
its hashes can differ from imagehash's by a bit or two where DCT coefficients sit near the
median. On high-quality JPEGs entropy decoding, which draft mode cannot skip, dominates.
`pixel_signals` is the fast path without any decode, from the pixels download (or load) resized
just before it encoded them.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

HASH_SIZE = 8
HIGHFREQ = 4
PHASH_INPUT = HASH_SIZE * HIGHFREQ  # 32 px, as imagehash.phash
FAST_MIN_SIDE = 2 * PHASH_INPUT  # draft decode keeps at least this many pixels on the short side
COLOUR_GRID = 4  # a 4x4 RGB thumbnail: the colour signal that confirms low-detail matches


@dataclass(frozen=True)
class ImageSignals:
    """What the features stage computes for one image."""

    sha256: str
    phash: str  # 16 hex digits, imagehash's string form
    dhash: str
    luma_std: float  # spread of the 32x32 greyscale: near 0 for blank or solid images
    colour: bytes  # COLOUR_GRID x COLOUR_GRID x 3 uint8 means


def bits_to_hex(bits: np.ndarray) -> str:
    """Row-major booleans to hex, as imagehash's str(ImageHash) writes them."""
    return np.packbits(bits.astype(bool).ravel()).tobytes().hex()


def hex_to_uint64(hexes: list[str]) -> np.ndarray:
    """16-hex-digit hashes to a uint64 array (vectorised; big-endian as written)."""
    if not hexes:
        return np.empty(0, np.uint64)
    return np.frombuffer(bytes.fromhex("".join(hexes)), dtype=">u8").astype(np.uint64)


# The first HASH_SIZE rows of scipy's unnormalised DCT-II matrix: low = D @ pixels @ D.T
_n = np.arange(PHASH_INPUT)
_DCT = 2 * np.cos(np.pi * (2 * _n[None, :] + 1) * np.arange(HASH_SIZE)[:, None] / (2 * PHASH_INPUT))


def _phash_bits(grey32, exact: bool = True) -> np.ndarray:
    pixels = np.asarray(grey32)
    if exact:  # scipy's FFT-based DCT, exactly as imagehash computes it
        import scipy.fftpack

        low = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)[:HASH_SIZE, :HASH_SIZE]
    else:  # the same transform as two small matrix products: ~10x cheaper, equal up to rounding
        low = _DCT @ pixels.astype(np.float64) @ _DCT.T
    return low > np.median(low)


def _dhash_bits(grey) -> np.ndarray:
    from PIL import Image

    small = np.asarray(grey.resize((HASH_SIZE + 1, HASH_SIZE), Image.Resampling.LANCZOS), dtype=np.int16)
    return small[:, 1:] > small[:, :-1]


def signals(data: bytes, exact: bool = False) -> ImageSignals:
    """Hashes and colour signals of encoded image bytes (one decode)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if not exact and im.format == "JPEG":
            w, h = im.size
            scale = max(1, min(8, min(w, h) // FAST_MIN_SIDE))
            if scale > 1:
                im.draft("RGB", ((w + scale - 1) // scale, (h + scale - 1) // scale))
        im.load()
        return _signals(im, data, exact)


def pixel_signals(pixels: np.ndarray, data: bytes) -> ImageSignals:
    """The fast path's signals of an image from the pixels it was encoded from (OpenCV's order:
    BGR, or 2-d grey), `data` being the encoded bytes: no decode. Equal to `signals(data)` up to
    what the encode changed (a bit or two of a hash, as the fast path's draft decode)."""
    import cv2
    from PIL import Image

    h, w = pixels.shape[:2]
    scale = max(1, min(8, min(w, h) // FAST_MIN_SIDE))
    if scale > 1:  # as the fast path's draft decode: means of scale x scale blocks (OpenCV's fast path)
        w, h = w // scale, h // scale
        pixels = cv2.resize(pixels[:h * scale, :w * scale], (w, h), interpolation=cv2.INTER_AREA)
    rgb = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return _signals(Image.fromarray(rgb), data, exact=False)


def _signals(im, data: bytes, exact: bool) -> ImageSignals:
    from PIL import Image

    grey = im.convert("L")
    rgb = im if im.mode == "RGB" else im.convert("RGB")
    grey32 = grey.resize((PHASH_INPUT, PHASH_INPUT), Image.Resampling.LANCZOS)
    colour = np.asarray(rgb.resize((COLOUR_GRID, COLOUR_GRID), Image.Resampling.BOX), dtype=np.uint8)
    return ImageSignals(
        sha256=hashlib.sha256(data).hexdigest(),
        phash=bits_to_hex(_phash_bits(grey32, exact)),
        dhash=bits_to_hex(_dhash_bits(grey32)),
        luma_std=float(np.asarray(grey32, dtype=np.float32).std()),
        colour=colour.tobytes(),
    )


def colour_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute difference of colour grids (rows of COLOUR_GRID*COLOUR_GRID*3 uint8), 0..255."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=-1)


def colour_correlation(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation of colour grids (rows of uint8) and the smaller of the two grids' spreads
    (standard deviation of their values): correlation means little where a spread is small."""
    x = a.astype(np.float32) - a.mean(axis=-1, keepdims=True, dtype=np.float32)
    y = b.astype(np.float32) - b.mean(axis=-1, keepdims=True, dtype=np.float32)
    xx, yy = (x * x).sum(axis=-1), (y * y).sum(axis=-1)
    corr = (x * y).sum(axis=-1) / np.sqrt(np.maximum(xx * yy, 1e-6))
    return corr, np.sqrt(np.minimum(xx, yy) / x.shape[-1])
