"""Duplicate groups: from pairs of near rows to one keeper per group, every drop near its keeper.

Pairs are grouped into connected components. Inside a component, rows are taken in rank order:
the best is kept, every row `near` it is dropped, then the best remaining row is kept, and so on.
So each dropped row is itself near the keeper it names, never merely chained to it through others.
Exact dedup (pHash, dHash) and semantic dedup (CLIP cosine) differ only in their `near` test.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmcurate.algos.hamming import components

# near(keeper, rows) -> (which of rows are near the keeper, the value that says how near)
Near = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]


def keepers(n: int, edges: np.ndarray, rank: np.ndarray, near: Near, fill: float | int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """For each of n rows, the row it duplicates (-1: none) and `near`'s value for the pair (else `fill`).

    `edges` are (i, j) rows of candidate pairs; `rank` orders rows by the keep policy (0 = keep first).
    Memory: O(n + edges).
    """
    keeper_of = np.full(n, -1, np.int64)
    value = np.full(n, fill, dtype)
    if n < 2 or not len(edges):
        return keeper_of, value
    labels = components(n, edges[:, :2])
    idx = np.flatnonzero(np.bincount(labels)[labels] >= 2)
    idx = idx[np.lexsort((rank[idx], labels[idx]))]
    lab = labels[idx]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    for members in np.split(idx, starts[1:]):
        greedy(members, near, keeper_of, value)
    return keeper_of, value


def greedy(members: np.ndarray, near: Near, keeper_of: np.ndarray, value: np.ndarray) -> None:
    """One group, `members` in rank order: keep the best, drop every row near it, repeat with the
    best one left. Fills `keeper_of` and `value` for the dropped members."""
    remaining = members
    while len(remaining) > 1:
        keeper, rest = remaining[0], remaining[1:]
        close, how = near(keeper, rest)
        keeper_of[rest[close]] = keeper
        value[rest[close]] = how[close]
        remaining = rest[~close]
