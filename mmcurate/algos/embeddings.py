"""Unit-vector embeddings: reading them from Arrow, spherical k-means, and pairs above a cosine.

Pairs with cosine similarity >= a threshold are found exactly (every pair, in blocks of matrix
products) up to EXACT_LIMIT rows; above that, as SemDeDup does, the embeddings are clustered with
spherical k-means and pairs are searched within each cluster only (a pair split across two
clusters is missed: the price of not comparing 10^8 x 10^8).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mmcurate.algos.parallel import Parallel

EXACT_LIMIT = 20_000  # up to this many rows every pair is compared
CLUSTER_SIZE = 5_000  # target rows per k-means cluster above it
BLOCK = 2_048  # rows per matrix-product block
KMEANS_ITERATIONS = 10
KMEANS_SAMPLE = 200_000

def embeddings_of(column: pa.ChunkedArray) -> np.ndarray:
    """A list<float16> column as a float32 matrix with unit rows."""
    arr = column.combine_chunks()
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    emb = flat.reshape(n, -1)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def nearest_centre(emb: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of each row's most similar centre (unit vectors), computed in blocks."""
    blocks = [np.argmax(emb[i : i + BLOCK] @ centres.T, axis=1) for i in range(0, len(emb), BLOCK)]
    return np.concatenate(blocks) if blocks else np.zeros(0, np.int64)


def kmeans(emb: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Spherical k-means labels (deterministic for a seed); centres fitted on a sample."""
    rng = np.random.default_rng(seed)
    sample = emb[rng.choice(len(emb), min(len(emb), KMEANS_SAMPLE), replace=False)]
    centres = sample[rng.choice(len(sample), k, replace=False)].copy()
    for _ in range(KMEANS_ITERATIONS):
        labels = np.argmax(sample @ centres.T, axis=1)
        for c in range(k):
            members = sample[labels == c]
            if len(members):
                v = members.sum(0)
                centres[c] = v / max(np.linalg.norm(v), 1e-12)
    return nearest_centre(emb, centres)


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


def similar_pairs(emb: np.ndarray, threshold: float, parallel: Parallel) -> np.ndarray:
    """All (exact mode) or within-cluster (k-means mode) pairs with cosine >= threshold."""
    n = len(emb)
    if n <= EXACT_LIMIT:
        groups = [np.arange(n)]
    else:
        labels = kmeans(emb, int(np.ceil(n / CLUSTER_SIZE)))
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    items = [(g, s) for g in groups if len(g) > 1 for s in range(0, len(g), BLOCK)]
    found = [f for f in parallel(_block_pairs, items, (emb, threshold)) if len(f)]
    return np.concatenate(found) if found else np.empty((0, 3), np.int64)
