"""Hash partitioning for decisions over a whole run, as plain numpy: which part a key goes to,
splitting columns into parts, naming rows across tasks.

A row is named across tasks by its *gid*: its shard in the high 32 bits, its position among the
shard's alive rows in the low 32. A part keyed by gid goes back to the shards of one *group*
(`shard % parts`), so a shard's task reads one part from each task that decided about its rows.
"""

from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
SHIFT = 32


def gid(shard: int, n: int) -> np.ndarray:
    """The gids of a shard's n alive rows."""
    return (np.int64(shard) << SHIFT) | np.arange(n, dtype=np.int64)


def shard_of(gids: np.ndarray) -> np.ndarray:
    return gids >> SHIFT


def local(gids: np.ndarray) -> np.ndarray:
    return gids & np.int64((1 << SHIFT) - 1)


def mix(keys: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every bit of a key moves every bit of the result (a plain multiply
    would leave keys that differ only in their high bits in one part)."""
    x = np.asarray(keys, np.uint64).copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def bucket(keys: np.ndarray, parts: int) -> np.ndarray:
    """The part (0..parts-1) of each uint64 key."""
    # small integer part numbers: numpy sorts them by radix (`split`)
    return (mix(keys) % np.uint64(parts)).astype(np.uint16 if parts <= 1 << 16 else np.int64)


def split(columns: dict[str, np.ndarray], part: np.ndarray, parts: int) -> list[dict[str, np.ndarray]]:
    """The rows of `columns` (equal-length arrays) cut into `parts` by `part`, in order within each."""
    if part.dtype != np.uint16 and parts <= 1 << 16:
        part = part.astype(np.uint16)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(parts + 1))
    return [{name: values[order[bounds[p]:bounds[p + 1]]] for name, values in columns.items()} for p in range(parts)]


def by_group(columns: dict[str, np.ndarray], parts: int, key: str = "gid") -> list[dict[str, np.ndarray]]:
    """`columns` cut by the shard group of their gids (`key`)."""
    return split(columns, shard_of(columns[key]) % parts, parts)


def merge(parts) -> dict[str, np.ndarray]:
    """Parts of the same columns joined, empty parts ({}) skipped; {} if all are."""
    parts = [p for p in parts if p]
    names = parts[0].keys() if parts else ()
    return {name: np.concatenate([p[name] for p in parts]) for name in names}


def of_shard(columns: dict[str, np.ndarray], shard: int, key: str = "gid") -> dict[str, np.ndarray]:
    mine = shard_of(columns[key]) == shard
    return {name: values[mine] for name, values in columns.items()}
