"""Exact all-pairs search for 64-bit hashes within a Hamming distance, and grouping.

Pigeonhole, generalised: split the 64 bits into m bands. Two hashes at distance <= k differ in
at most k bands, so at least m - k bands are equal. For every choice of m - k bands, hashes that
agree on all of them are candidates; each candidate is verified by popcount. No pair within k
is missed, whatever m is; m is chosen so the keys are wide enough that few random hashes
collide. Each band choice is an independent pass over all hashes, so passes can run on
different workers while every worker sees every hash: pairs across shards cannot be missed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmcurate.algos.parallel import Parallel

MAX_PASSES = 4096
PASSES_PER_TASK = 12


@dataclass(frozen=True)
class BandPlan:
    """Band widths (bits, most significant first) and how many must match."""

    widths: tuple[int, ...]
    need: int

    @property
    def combos(self) -> list[tuple[int, ...]]:
        return list(itertools.combinations(range(len(self.widths)), self.need))


def plan(n: int, k: int) -> BandPlan:
    """The band split with the least expected work for `n` hashes and distance `k`."""
    if k == 0:
        return BandPlan((64,), 1)
    best: tuple[float, BandPlan] | None = None
    for m in range(k + 1, 65):
        need = m - k
        passes = math.comb(m, need)
        if passes > MAX_PASSES:
            if best is not None:
                break
            continue
        widths = tuple(64 // m + (1 if i < 64 % m else 0) for i in range(m))
        key_bits = sum(sorted(widths)[:need])
        cost = passes * (n + n * n / 2.0**key_bits)
        if best is None or cost < best[0]:
            best = (cost, BandPlan(widths, need))
    assert best is not None, f"no band plan for k={k}"
    return best[1]


BAND_KEY_BYTES = 32  # what the band search moves per distinct value per pass: choice, key, value, rep


def shuffle_bytes(n: int, k: int) -> int:
    """The band keys a partitioned search for pairs within `k` among `n` hashes moves, at most
    (every hash distinct): passes x n x 32 B."""
    return len(plan(max(n, 2), k).combos) * n * BAND_KEY_BYTES


def _band_values(hashes: np.ndarray, widths: Sequence[int]) -> list[np.ndarray]:
    out, shift = [], 64
    for w in widths:
        shift -= w
        out.append((hashes >> np.uint64(shift)) & np.uint64((1 << w) - 1))
    return out


def band_values(hashes: np.ndarray, bands: BandPlan, combo: tuple[int, ...]) -> np.ndarray:
    """Each hash's key for one band choice: the chosen bands' bits, concatenated."""
    values = _band_values(hashes, bands.widths)
    key = np.zeros(len(hashes), np.uint64)
    for b in combo:
        key = (key << np.uint64(bands.widths[b])) | values[b]
    return key


def band_edges(combo: np.ndarray, key: np.ndarray, value: np.ndarray, rep: np.ndarray, k: int,
               hot: int) -> np.ndarray:
    """Edges between the `rep`s of hashes that share a (band choice, key) and are within `k`.

    One part of a partitioned search: every hash with a given (combo, key) is in the same part, so
    no pair is missed. A run of more than `hot` distinct hashes on one key (placeholders, near-blank
    images) is joined as a star without comparing its pairs: an edge only ever groups rows for a
    closer look (`algos/grouping`), so more edges cost time, never a wrong decision.
    """
    if len(key) < 2:
        return np.empty((0, 2), np.int64)
    if int(key.max()) < 1 << 48 and int(combo.max()) < 1 << 16:  # one uint64 sort key
        both = (combo.astype(np.uint64) << np.uint64(48)) | key
        order = np.argsort(both)  # deterministic for the same input; order within a run does not matter
        sorted_ = both[order]
        boundary = np.r_[True, sorted_[1:] != sorted_[:-1]]
    else:
        order = np.lexsort((key, combo))
        c, kk = combo[order], key[order]
        boundary = np.r_[True, (c[1:] != c[:-1]) | (kk[1:] != kk[:-1])]
    run = np.cumsum(boundary) - 1
    size = np.bincount(run)[run]
    first = order[np.flatnonzero(boundary)][run]  # the first member of each row's run
    star = (size > hot) & ~boundary
    edges = [np.stack([rep[first[star]], rep[order[star]]], axis=1)]
    small = (size <= hot) & (size >= 2)
    i, j = pairs_in_runs(order[small], run[small])
    if len(i):
        near = popcount(value[i] ^ value[j]) <= k
        edges.append(np.stack([rep[i[near]], rep[j[near]]], axis=1))
    out = np.concatenate(edges)
    if not len(out):
        return out.reshape(0, 2)
    out = np.sort(out, axis=1)
    out = out[np.lexsort((out[:, 1], out[:, 0]))]
    return out[np.r_[True, (out[1:, 0] != out[:-1, 0]) | (out[1:, 1] != out[:-1, 1])]]


def popcount(x: np.ndarray) -> np.ndarray:
    """Bits set per element of a uint64 array."""
    return np.bitwise_count(x).astype(np.int64)


def pairs_in_runs(order: np.ndarray, keys_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j) pairs of positions whose keys are equal, given a sort order."""
    n = len(order)
    if n < 2:
        empty = np.empty(0, np.int64)
        return empty, empty
    boundary = np.empty(n, bool)
    boundary[0] = True
    np.not_equal(keys_sorted[1:], keys_sorted[:-1], out=boundary[1:])
    run_id = np.cumsum(boundary) - 1
    sizes = np.bincount(run_id)
    in_multi = sizes[run_id] >= 2
    if not in_multi.any():
        empty = np.empty(0, np.int64)
        return empty, empty
    idx = order[in_multi]
    rid = run_id[in_multi]
    left, right = [], []
    for d in range(1, int(sizes.max())):
        same = rid[:-d] == rid[d:]
        if not same.any():
            break
        left.append(idx[:-d][same])
        right.append(idx[d:][same])
    return np.concatenate(left), np.concatenate(right)


def pairs_for_combos(hashes: np.ndarray, k: int, bands: BandPlan, combos: Sequence[tuple[int, ...]]) -> np.ndarray:
    """Verified pairs (i < j, distance <= k) found by the given band choices, as (i, j, d) rows."""
    found = []
    for combo in combos:
        key = band_values(hashes, bands, combo)
        order = np.argsort(key, kind="stable")
        i, j = pairs_in_runs(order, key[order])
        if len(i) == 0:
            continue
        d = popcount(hashes[i] ^ hashes[j])
        keep = d <= k
        lo, hi = np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep])
        found.append(np.stack([lo, hi, d[keep]], axis=1))
    if not found:
        return np.empty((0, 3), np.int64)
    return unique_pairs(np.concatenate(found))


def _search_task(shared: tuple[np.ndarray, int, BandPlan], combos: list) -> np.ndarray:
    hashes, k, bands = shared
    return pairs_for_combos(hashes, k, bands, combos)


def search_pairs(hashes: np.ndarray, k: int, parallel: Parallel) -> np.ndarray:
    """All pairs within k, the band passes spread over `parallel` workers."""
    bands = plan(len(hashes), k)
    combos = bands.combos
    chunks = [combos[i : i + PASSES_PER_TASK] for i in range(0, len(combos), PASSES_PER_TASK)]
    found = parallel(_search_task, chunks, (hashes, k, bands))
    found = [f for f in found if len(f)]
    return unique_pairs(np.concatenate(found)) if found else np.empty((0, 3), np.int64)


def unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """Drop repeated (i, j) rows; the rest sorted by (i, j)."""
    if len(pairs) == 0:
        return pairs.reshape(0, 3)
    p = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    keep = np.ones(len(p), bool)
    keep[1:] = (p[1:, 0] != p[:-1, 0]) | (p[1:, 1] != p[:-1, 1])
    return p[keep]


def find_pairs(hashes: np.ndarray, k: int) -> np.ndarray:
    """Every pair of distinct positions within Hamming distance `k`, as (i, j, distance) rows, i < j."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    bands = plan(len(hashes), k)
    return pairs_for_combos(hashes, k, bands, bands.combos)


def brute_force_pairs(hashes: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
    """All pairs within `k` by comparing every pair: the reference the banded search must match."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    out = []
    for start in range(0, len(hashes), block):
        chunk = hashes[start : start + block]
        d = popcount(chunk[:, None] ^ hashes[None, :])
        i, j = np.nonzero(d <= k)
        i = i + start
        keep = i < j
        out.append(np.stack([i[keep], j[keep], d[i[keep] - start, j[keep]]], axis=1))
    return np.concatenate(out) if out else np.empty((0, 3), np.int64)


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component label of each of n items under the pair edges (union-find semantics)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]
