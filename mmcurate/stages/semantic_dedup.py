"""Semantic deduplication: images whose CLIP embeddings are nearly parallel (SemDeDup).

Pairs with cosine similarity >= `dedup.semantic.threshold` come from `algos/embeddings`
(exact up to its limit, within k-means clusters above it); `algos/grouping` keeps, in each group,
the row with the highest CLIP score (ties: the first input row) and drops what is within the
threshold of it, so every dropped row is itself similar to the keeper its detail names. A run
larger than one partition decides as a dataflow of tasks (`embedding_flow.semantic`).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from mmcurate.algos import grouping
from mmcurate.algos.embeddings import embeddings_of, similar_pairs
from mmcurate.algos.parallel import Parallel, Tasks
from mmcurate.filters.base import Histogram, Verdicts
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config
from mmcurate.stages import embedding_flow
from mmcurate.stages.base import GlobalStage, ShardIO
from mmcurate.stages.embedding_flow import without_default_sample


def keepers(emb: np.ndarray, rank: np.ndarray, pairs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the row it duplicates (-1: none) and their similarity."""

    def near(keeper: int, rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sim = emb[rest] @ emb[keeper]
        return sim >= threshold, sim

    return grouping.keepers(len(emb), pairs, rank, near, np.nan, np.float32)


class SemanticDedupStage(GlobalStage):
    """Drops images whose CLIP embedding nearly matches a kept one's (reason `semantic_duplicate`)."""

    name = "semantic_dedup"
    version = "1"
    output_schema = C.SEMANTIC_DEDUP_SCHEMA
    score_columns = (C.SEMANTIC_DUP_OF, C.SEMANTIC_SIMILARITY)
    input_columns = (C.CLIP_EMBEDDING, C.CLIP_SCORE)
    settings = ("dedup.semantic.threshold",)
    histograms = (Histogram(C.SEMANTIC_SIMILARITY, "dedup.semantic.threshold", "min duplicate"),)

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.clip.enabled and config.dedup.semantic.enabled

    def config_sections(self) -> dict:
        return without_default_sample(self.config.dedup.semantic.model_dump())

    def decide_shards(self, io: ShardIO, tasks: Tasks) -> list:
        parts = math.ceil(io.rows / io.rows_per_partition)
        if parts <= 1:
            return super().decide_shards(io, tasks)
        return embedding_flow.semantic(self, io, tasks, parts)

    def judge(self, rows: pa.Table, parallel: Parallel) -> Verdicts:
        cfg = self.config.dedup.semantic
        threshold = cfg.threshold
        n = rows.num_rows
        emb = embeddings_of(rows[C.CLIP_EMBEDDING])
        score = rows[C.CLIP_SCORE].to_numpy(zero_copy_only=False).astype(np.float64)
        order = np.lexsort((rows[C.ROW].to_numpy(), -score))  # best-aligned first, then input order
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        keeper_of, similarity = keepers(emb, rank, similar_pairs(emb, threshold, parallel, cfg.kmeans_sample), threshold)
        uid = rows[C.UID].to_pylist()
        return semantic_verdicts([uid[k] if k >= 0 else None for k in keeper_of.tolist()], similarity, threshold)


def semantic_verdicts(dup_of: list[str | None], similarity: np.ndarray, threshold: float) -> Verdicts:
    """Each row's verdict from the uid it duplicates (None: kept) and the cosine to it."""
    dropped = np.array([d is not None for d in dup_of], bool)
    return Verdicts(
        scores={C.SEMANTIC_DUP_OF: dup_of,
                C.SEMANTIC_SIMILARITY: pa.array(np.where(dropped, similarity, 0), pa.float32(), mask=~dropped)},
        reasons=["semantic_duplicate" if d else None for d in dropped],
        details=[f"semantic duplicate of {dup} (CLIP image cosine {sim:.4f} >= {threshold})" if dup is not None else None
                 for dup, sim in zip(dup_of, similarity.tolist())],
    )
