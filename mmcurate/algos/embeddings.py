"""Unit-vector embeddings: reading them from Arrow, spherical k-means, and pairs above a cosine.

Pairs with cosine similarity >= a threshold are found exactly (every pair, in blocks of matrix
products) up to EXACT_LIMIT rows; above that, as SemDeDup does, the embeddings are clustered with
spherical k-means and pairs are searched within each cluster only (a pair split across two
clusters is missed: the price of not comparing 10^8 x 10^8).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmcurate.algos.parallel import Parallel

EXACT_LIMIT = 20_000  # up to this many rows every pair is compared
CLUSTER_SIZE = 5_000  # target rows per k-means cluster above it
BLOCK = 2_048  # rows per matrix-product block
KMEANS_ITERATIONS = 10
KMEANS_SAMPLE = 200_000

def stored(column: pa.ChunkedArray) -> np.ndarray:
    """An embedding column (fixed_size_list<float16, d>, or the variable list of older shards) as
    the n x d float16 matrix it stores."""
    arr = column.combine_chunks()
    if arr.null_count:  # flatten() would leave their slots out, and the rows would shift
        raise ValueError(f"{arr.null_count} rows without an embedding: only rows clip_embed kept have one")
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0), np.float16)
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(n, -1)


def as_fixed(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """An embedding column as fixed_size_list<float16, d>: a shard written before embeddings were
    stored so (list<float16>) is cast, d from its first value; a column with no value is left
    as it is (it has no rows that need one)."""
    if not pa.types.is_list(column.type):
        return column
    lengths = pc.list_value_length(column).drop_null()
    if not len(lengths):
        return column
    return column.cast(pa.list_(column.type.value_type, lengths[0].as_py()))


def unit(emb: np.ndarray) -> np.ndarray:
    """float32 rows of length 1."""
    emb = emb.astype(np.float32)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def embeddings_of(column: pa.ChunkedArray) -> np.ndarray:
    """A list<float16> column as a float32 matrix with unit rows."""
    return unit(stored(column))


def nearest_centre(emb: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of each row's most similar centre (unit vectors), computed in blocks."""
    blocks = [np.argmax(emb[i : i + BLOCK] @ centres.T, axis=1) for i in range(0, len(emb), BLOCK)]
    return np.concatenate(blocks) if blocks else np.zeros(0, np.int64)


def fit_centres(sample: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Spherical k-means centres (k x d, unit rows) fitted on `sample` (unit rows), k <= len(sample)."""
    centres = sample[rng.choice(len(sample), min(k, len(sample)), replace=False)].copy()
    for _ in range(KMEANS_ITERATIONS):
        labels = nearest_centre(sample, centres)  # in blocks: never sample x k at once
        order = np.argsort(labels, kind="stable")
        present, starts = np.unique(labels[order], return_index=True)
        sums = np.add.reduceat(sample[order], starts, axis=0)
        centres[present] = unit(sums)  # a centre no row is nearest to stays where it is
    return centres


def kmeans(emb: np.ndarray, k: int, seed: int = 0, sample: int = KMEANS_SAMPLE) -> np.ndarray:
    """Spherical k-means labels (deterministic for a seed); centres fitted on `sample` rows."""
    rng = np.random.default_rng(seed)
    fit_on = emb[rng.choice(len(emb), min(len(emb), sample), replace=False)]
    return nearest_centre(emb, fit_centres(fit_on, k, rng))


def sampled(rows: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Which input rows (by row number) are in a seeded sample of about `fraction` of a run: the
    same rows however the run is cut into shards."""
    from mmcurate.algos.partition import mix

    if fraction >= 1:
        return np.ones(len(rows), bool)
    return (mix(np.asarray(rows, np.int64).astype(np.uint64) ^ np.uint64(seed)) >> np.uint64(11)) < np.uint64(fraction * 2**53)


def _block_pairs(shared: tuple[np.ndarray, float], item: tuple[np.ndarray, int]) -> np.ndarray:
    """Pairs (i, j, similarity * 1e6) with i < j within one group, for the group's rows from `start` on."""
    emb, threshold = shared
    members, start = item
    a = members[start : start + BLOCK]
    b = members[start:]
    sim = emb[a] @ emb[b].T
    ii, jj = np.nonzero(sim >= threshold)
    keep = jj > ii  # b starts at a's first row: only the upper triangle
    ii, jj = ii[keep], jj[keep]
    return np.stack([a[ii], b[jj], np.round(sim[ii, jj] * 1e6).astype(np.int64)], axis=1)


def similar_pairs(emb: np.ndarray, threshold: float, parallel: Parallel, sample: int = KMEANS_SAMPLE) -> np.ndarray:
    """All (exact mode) or within-cluster (k-means mode) pairs with cosine >= threshold."""
    n = len(emb)
    if n <= EXACT_LIMIT:
        groups = [np.arange(n)]
    else:
        labels = kmeans(emb, int(np.ceil(n / CLUSTER_SIZE)), sample=sample)
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    items = [(g, s) for g in groups if len(g) > 1 for s in range(0, len(g), BLOCK)]
    found = [f for f in parallel(_block_pairs, items, (emb, threshold)) if len(f)]
    return np.concatenate(found) if found else np.empty((0, 3), np.int64)


def cluster_pairs(emb: np.ndarray, threshold: float, seed: int, depth: int = 0) -> np.ndarray:
    """The pairs with cosine >= threshold among one cluster's rows (unit rows), in this process;
    a cluster of more than 2 x CLUSTER_SIZE rows is split by k-means first (twice at most, then
    searched whole), so no block product grows with the run."""
    n = len(emb)
    if n > 2 * CLUSTER_SIZE and depth < 2:
        labels = kmeans(emb, int(np.ceil(n / CLUSTER_SIZE)), seed)
        found = []
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            sub = cluster_pairs(emb[members], threshold, seed + 1 + int(c), depth + 1)
            found.append(np.stack([members[sub[:, 0]], members[sub[:, 1]], sub[:, 2]], axis=1))
        return np.concatenate(found) if found else np.empty((0, 3), np.int64)
    every = np.arange(n)
    return np.concatenate([np.empty((0, 3), np.int64)] + [_block_pairs((emb, threshold), (every, s)) for s in range(0, n, BLOCK)])
