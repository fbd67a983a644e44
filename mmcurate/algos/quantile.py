"""An exact percentile over values spread across shards, without one process holding them all.

`np.percentile(all_values, p)` (its default, linear method) needs two order statistics of the
values. Each is found by passes over the shards: every shard counts its values per bin of a
histogram over the interval known to hold the statistic (a few KB back per shard); the driver
narrows the interval to the one bin that holds it, until that bin holds few enough values to
fetch, or a single value. Passes: about log(n / FETCH) / log(BINS), 2-3 even at a billion rows.
The result is bit-identical to numpy's (tested).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmcurate.algos.parallel import Tasks

BINS = 4096
FETCH = 100_000  # a bin holding at most this many values is fetched and sorted

# load(shard) -> that shard's values, float64, NaN-free
Load = Callable[[int], np.ndarray]


def _range(load: Load, shard: int) -> tuple[int, float, float]:
    v = load(shard)
    return (len(v), float(v.min()), float(v.max())) if len(v) else (0, np.inf, -np.inf)


def _histogram(load: Load, shard: int, edges: np.ndarray) -> tuple[int, np.ndarray]:
    """Values below the interval, and per bin [e_i, e_i+1) of `edges`."""
    v = load(shard)
    inside = v[(v >= edges[0]) & (v < edges[-1])]
    return int((v < edges[0]).sum()), np.bincount(np.searchsorted(edges, inside, side="right") - 1,
                                                  minlength=len(edges) - 1)


def _fetch(load: Load, shard: int, lo: float, hi: float) -> np.ndarray:
    v = load(shard)
    return v[(v >= lo) & (v < hi)]


def order_statistic(load: Load, shards: list[int], k: int, lo: float, hi: float, tasks: Tasks) -> float:
    """The k-th smallest (0-based) of all values, known to lie in [lo, hi]."""
    hi = float(np.nextafter(hi, np.inf))  # [lo, hi) from here on
    while True:
        if np.nextafter(lo, np.inf) >= hi:  # one float left
            return lo
        edges = np.unique(np.linspace(lo, hi, BINS + 1))
        if len(edges) < 3:
            edges = np.array([lo, np.nextafter(lo, np.inf), hi])
        parts = [tasks.get(r) for r in [tasks.submit(_histogram, load, s, edges) for s in shards]]
        below = sum(p[0] for p in parts)
        counts = np.sum([p[1] for p in parts], axis=0)
        b = int(np.searchsorted(np.cumsum(counts), k - below, side="right"))
        lo, hi, below = float(edges[b]), float(edges[b + 1]), below + int(counts[:b].sum())
        if counts[b] <= FETCH:
            refs = [tasks.submit(_fetch, load, s, lo, hi) for s in shards]
            values = np.sort(np.concatenate([tasks.get(r) for r in refs]))
            return float(values[k - below])


def percentile(load: Load, shards: list[int], p: float, tasks: Tasks) -> tuple[float | None, int]:
    """`np.percentile(values of every shard, p)` and how many values there are (None when none)."""
    ranges = [tasks.get(r) for r in [tasks.submit(_range, load, s) for s in shards]]
    n = sum(r[0] for r in ranges)
    if not n:
        return None, 0
    lo, hi = min(r[1] for r in ranges), max(r[2] for r in ranges)
    # numpy's linear method: the virtual index (n - 1) q between two order statistics, then its lerp
    virtual = (n - 1) * np.true_divide(p, 100)
    prev = int(np.floor(virtual))
    if virtual >= n - 1:
        prev = nxt = n - 1
    else:
        nxt = prev + 1
    a = order_statistic(load, shards, prev, lo, hi, tasks)
    b = a if nxt == prev else order_statistic(load, shards, nxt, a, hi, tasks)
    gamma = np.float64(virtual - prev)
    diff = np.float64(b) - np.float64(a)
    value = np.float64(a) + diff * gamma
    if gamma >= 0.5:
        value = np.float64(b) - diff * (1 - gamma)
    return float(value), n
