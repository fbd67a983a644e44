"""Semantic deduplication: images whose CLIP embeddings are nearly parallel (SemDeDup).

Pairs with cosine similarity >= `dedup.semantic.threshold` are found exactly (every pair, in
blocks of matrix products) up to EXACT_LIMIT rows; above that, as SemDeDup does, the embeddings
are clustered with spherical k-means and pairs are searched within each cluster only (a pair
split across two clusters is missed: the price of not comparing 10^8 x 10^8). Pairs are grouped
into connected components; inside one, the row with the highest CLIP score is kept (ties: the
first input row), everything within the threshold of it is dropped, and so on, so every dropped
row is itself similar to the keeper its detail names.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mmcurate.pipelines import hamming
from mmcurate.pipelines.stage import GlobalStage, Parallel, decisions
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config

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


def keepers(emb: np.ndarray, rank: np.ndarray, pairs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the row it duplicates (-1: none) and their similarity."""
    n = len(emb)
    keeper_of = np.full(n, -1, np.int64)
    similarity = np.full(n, np.nan, np.float32)
    if not len(pairs):
        return keeper_of, similarity
    labels = hamming.components(n, pairs[:, :2])
    grouped = np.bincount(labels)[labels] >= 2
    idx = np.flatnonzero(grouped)
    idx = idx[np.lexsort((rank[idx], labels[idx]))]
    lab = labels[idx]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    for members in np.split(idx, starts[1:]):
        remaining = members
        while len(remaining) > 1:
            keeper, rest = remaining[0], remaining[1:]
            sim = emb[rest] @ emb[keeper]
            near = sim >= threshold
            keeper_of[rest[near]] = keeper
            similarity[rest[near]] = sim[near]
            remaining = rest[~near]
    return keeper_of, similarity


class SemanticDedupStage(GlobalStage):
    """Drops images whose CLIP embedding nearly matches a kept one's (reason `semantic_duplicate`)."""

    name = "semantic_dedup"
    version = "1"
    output_schema = C.SEMANTIC_DEDUP_SCHEMA
    score_columns = (C.SEMANTIC_DUP_OF, C.SEMANTIC_SIMILARITY)
    input_columns = (C.CLIP_EMBEDDING, C.CLIP_SCORE)

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.clip.enabled and config.dedup.semantic.enabled

    def config_sections(self) -> dict:
        return self.config.dedup.semantic.model_dump()

    def decide(self, rows: pa.Table, parallel: Parallel) -> pa.Table:
        threshold = self.config.dedup.semantic.threshold
        n = rows.num_rows
        emb = embeddings_of(rows[C.CLIP_EMBEDDING])
        score = rows[C.CLIP_SCORE].to_numpy(zero_copy_only=False).astype(np.float64)
        order = np.lexsort((rows[C.ROW].to_numpy(), -score))  # best-aligned first, then input order
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        keeper_of, similarity = keepers(emb, rank, similar_pairs(emb, threshold, parallel), threshold)
        uid = rows[C.UID].to_pylist()
        dropped = keeper_of >= 0
        status = [C.DROPPED if d else C.KEPT for d in dropped]
        reason = ["semantic_duplicate" if d else None for d in dropped]
        dup_of = [uid[k] if k >= 0 else None for k in keeper_of.tolist()]
        detail = [
            f"semantic duplicate of {dup_of[i]} (CLIP image cosine {similarity[i]:.4f} >= {threshold})" if dropped[i] else None
            for i in range(n)
        ]
        cols = decisions(rows, status, reason, detail)
        cols[C.SEMANTIC_DUP_OF] = pa.array(dup_of, pa.string())
        cols[C.SEMANTIC_SIMILARITY] = pa.array(np.where(dropped, similarity, 0), pa.float32(), mask=~dropped)
        return pa.table(cols, schema=self.output_schema)
