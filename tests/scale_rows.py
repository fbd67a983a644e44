"""Synthetic dedup input with no images: the features stage's columns for n rows, with planted
exact copies, near copies (a few bits flipped in both hashes, the colour layout copied) spread
over the whole run, and a cluster of blank images. Shared by the tests and bench/scale.py."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mmcurate.schemas import columns as C


def flip(values: np.ndarray, rng: np.random.Generator, max_bits: int) -> np.ndarray:
    """Each value with 0..max_bits random bits flipped."""
    out = values.copy()
    bits = rng.integers(0, max_bits + 1, size=len(values))
    for b in range(max_bits):
        on = bits > b
        out[on] ^= np.uint64(1) << rng.integers(0, 64, size=int(on.sum())).astype(np.uint64)
    return out


def hexes(values: np.ndarray) -> pa.Array:
    """uint64 values as the 16-char hex strings the features stage stores."""
    raw = values.astype(">u8").tobytes().hex().encode()
    return pa.Array.from_buffers(pa.string(), len(values), [None, pa.py_buffer(np.arange(len(values) + 1, dtype=np.int32) * 16),
                                                             pa.py_buffer(raw)])


def pool(n: int, seed: int = 12345) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Originals that rows in any shard may be near copies of: (pHash, dHash, colour grid)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2**64, size=n, dtype=np.uint64), rng.integers(0, 2**64, size=n, dtype=np.uint64),
            rng.integers(0, 256, size=(n, 48), dtype=np.uint8))


def rows(n: int, seed: int = 0, start: int = 0, near: float = 0.2, exact: float = 0.05, blank: float = 0.01,
         originals: tuple | None = None, max_flips: int = 10) -> pa.Table:
    """n rows numbered from `start`: `near` of them near copies (up to `max_flips` bits off) of
    another row, or of one of `originals` (from `pool`: copies that land in other shards), `exact`
    byte copies of one of a few popular images, `blank` all-zero hashes (a hot value)."""
    rng = np.random.default_rng(seed)
    ph = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    dh = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    colour = rng.integers(0, 256, size=(n, 48), dtype=np.uint8)
    dst = rng.choice(n, size=int(n * near), replace=False)
    src_ph, src_dh, src_colour = originals or (ph, dh, colour)
    src = rng.integers(0, len(src_ph), size=len(dst))
    ph[dst], dh[dst] = flip(src_ph[src], rng, max_flips), flip(src_dh[src], rng, max_flips)
    colour[dst] = src_colour[src]
    hot = rng.choice(n, size=int(n * blank), replace=False)
    ph[hot] = dh[hot] = 0
    sha = rng.integers(0, 2**64, size=(n, 4), dtype=np.uint64)
    popular = rng.random(n) < exact
    sha[popular] = rng.integers(0, 64, size=(int(popular.sum()), 1), dtype=np.uint64)
    sha_hex = sha.astype(">u8").tobytes().hex().encode()
    offsets = pa.py_buffer(np.arange(n + 1, dtype=np.int32) * 64)
    uid = rng.integers(0, 2**64, size=(n, 2), dtype=np.uint64).astype(">u8").tobytes().hex().encode()
    return pa.table({
        C.UID: pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(np.arange(n + 1, dtype=np.int32) * 32), pa.py_buffer(uid)]),
        C.ROW: pa.array(np.arange(start, start + n, dtype=np.int64)),
        C.SHA256: pa.Array.from_buffers(pa.string(), n, [None, offsets, pa.py_buffer(sha_hex)]),
        C.PHASH: hexes(ph), C.DHASH: hexes(dh),
        C.LUMA_STD: pa.array((rng.random(n) * 20).astype(np.float32)),
        C.COLOUR: pa.FixedSizeBinaryArray.from_buffers(pa.binary(48), n, [None, pa.py_buffer(colour.tobytes())]).cast(pa.binary()),
        C.ORIGINAL_WIDTH: pa.array(rng.integers(1, 5, size=n).astype(np.int32)),
        C.ORIGINAL_HEIGHT: pa.array(np.full(n, 10, np.int32)),
    })
