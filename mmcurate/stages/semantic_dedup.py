"""Semantic deduplication: images whose CLIP embeddings are nearly parallel (SemDeDup).

Pairs with cosine similarity >= `dedup.semantic.threshold` come from `algos/embeddings`
(exact up to its limit, within k-means clusters above it); `algos/grouping` keeps, in each group,
the row with the highest CLIP score (ties: the first input row) and drops what is within the
threshold of it, so every dropped row is itself similar to the keeper its detail names. A run
larger than one partition decides as a dataflow of tasks, none holding every embedding:
k-means centres on a sample (`embedding_flow.centres`); per shard, each row (embedding, score,
row, uid) to the partition its nearest centre hashes to; per partition, each cluster in rank
order (best CLIP score, then input order) searched for pairs at or above the threshold in blocks
(a cluster over 2 x 5,000 rows split by k-means first, `embeddings.cluster_pairs`) and its
keepers chosen as above; a task per shard writes its rows' decisions. A pair whose rows fall in
different clusters is not found (as in SemDeDup, and as in one task above
`embeddings.EXACT_LIMIT`): `tests/stages/test_embedding_flow.py` and `bench/scale.py` measure
how many against brute force.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pyarrow as pa

from mmcurate.algos import embeddings, grouping, partition
from mmcurate.algos.embeddings import cluster_pairs, embeddings_of, nearest_centre, similar_pairs, stored, unit
from mmcurate.algos.parallel import Parallel, Tasks, submit_parts
from mmcurate.filters.base import Histogram, Verdicts
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config
from mmcurate.stages import embedding_flow
from mmcurate.stages.base import GlobalStage, ShardIO, assemble
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
        if parts <= 1 or io.rows <= embeddings.EXACT_LIMIT:  # small enough to compare every pair
            return super().decide_shards(io, tasks)
        return decide_in_partitions(self, io, tasks, parts)

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


def _route(io: ShardIO, shard: int, parts: int, centres_: np.ndarray) -> list[dict]:
    rows = io.read(shard)
    n = rows.num_rows
    if not n:
        return [{} for _ in range(parts)]
    emb = stored(rows[C.CLIP_EMBEDDING])
    cluster = nearest_centre(unit(emb), centres_).astype(np.int64)
    cols = {"cluster": cluster, "gid": partition.gid(shard, n), "emb": emb,
            "score": rows[C.CLIP_SCORE].to_numpy(zero_copy_only=False).astype(np.float64),
            "row": rows[C.ROW].to_numpy(), "uid": rows[C.UID].to_numpy(zero_copy_only=False).astype("S")}
    return partition.split(cols, partition.bucket(cluster.astype(np.uint64), parts), parts)


def _search(threshold: float, parts: int, *pieces: dict) -> list[dict]:
    got = partition.merge(pieces)
    if not got:
        return [{} for _ in range(parts)]
    order = np.lexsort((got["row"], -got["score"], got["cluster"]))  # each cluster best-aligned first
    got = {name: values[order] for name, values in got.items()}
    n = len(order)
    keeper_of, similarity = np.full(n, -1, np.int64), np.full(n, np.nan, np.float32)
    starts = np.flatnonzero(np.r_[True, got["cluster"][1:] != got["cluster"][:-1]])
    for members in np.split(np.arange(n), starts[1:]):
        if len(members) < 2:
            continue
        emb = unit(got["emb"][members])
        pairs = cluster_pairs(emb, threshold, seed=int(got["cluster"][members[0]]))
        k, sim = keepers(emb, np.arange(len(members)), pairs, threshold)
        dup = k >= 0
        keeper_of[members[dup]], similarity[members[dup]] = members[k[dup]], sim[dup]
    d = keeper_of >= 0
    return partition.by_group({"gid": got["gid"][d], "name": got["uid"][keeper_of[d]], "sim": similarity[d]}, parts)


def _write(stage: GlobalStage, io: ShardIO, shard: int, started: float, *found: dict) -> list[dict]:
    rows = io.read(shard)
    n = rows.num_rows
    dup_of: list[str | None] = [None] * n
    similarity = np.full(n, np.nan, np.float32)
    mine = partition.of_shard(partition.merge(found), shard) if any(found) else {}
    if mine:
        loc = partition.local(mine["gid"])
        similarity[loc] = mine["sim"]
        for row, name in zip(loc.tolist(), mine["name"].tolist()):
            dup_of[row] = name.decode()
    verdicts = semantic_verdicts(dup_of, similarity, stage.config.dedup.semantic.threshold)
    return [io.write(shard, assemble(stage, rows, verdicts), started)]


def decide_in_partitions(stage: GlobalStage, io: ShardIO, tasks: Tasks, parts: int) -> list:
    """References to each pending shard's [stats]."""
    cfg = stage.config.dedup.semantic
    started = time.time()
    k = max(2, min(-(-io.rows // embeddings.CLUSTER_SIZE), cfg.kmeans_sample // 10))  # at least 10 sample rows a centre
    fitted = embedding_flow.centres(tasks, io, k, cfg.kmeans_sample)
    routed = [submit_parts(tasks, parts, _route, io, s, parts, fitted) for s in range(io.shards)]
    found = [submit_parts(tasks, parts, _search, cfg.threshold, parts, *(r[p] for r in routed)) for p in range(parts)]
    del routed
    return [tasks.submit(_write, stage, io, s, started, *(f[s % parts] for f in found)) for s in io.pending]
