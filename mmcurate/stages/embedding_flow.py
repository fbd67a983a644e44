"""The embedding stages over a run larger than one partition, as a dataflow of tasks none of
which holds every embedding (the shape of NeMo Curator's SemDeDup):

1. **sample**, per shard: the stored embeddings of a seeded sample of rows, chosen by row number
   (the same rows however the run is sharded), about `kmeans_sample` rows in all;
2. **fit**, one task: spherical k-means centres on that sample (memory: the sample, not the run);
3. per shard, each row's nearest centre. Then
   - **image_based** decides each shard by itself: kept if its centre is one that a reference
     image is nearest to (the centres are the sample's; the one-task path refits them on every
     row's assignment, so a few rows near a boundary may go the other way);
   - **semantic_dedup** sends each row's embedding, score, row and uid to the partition its
     cluster hashes to; per partition, each cluster in rank order (best CLIP score, then input
     order) is searched for pairs at or above the threshold in blocks (a cluster over 2 x 5,000
     rows is split by k-means first, `embeddings.cluster_pairs`) and its keepers chosen as the
     one-task path chooses them; a task per shard writes its rows' decisions.

A pair whose rows fall in different clusters is not found (as in SemDeDup, and as in the one-task
path above `embeddings.EXACT_LIMIT`): `tests/stages/test_embedding_flow.py` and `bench/scale.py`
measure how many against brute force. Every drop is at or above the threshold to its keeper.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from mmcurate.algos import embeddings, partition
from mmcurate.algos.embeddings import KMEANS_SAMPLE, cluster_pairs, fit_centres, nearest_centre, sampled, stored, unit
from mmcurate.algos.parallel import Tasks, submit_parts
from mmcurate.schemas import columns as C
from mmcurate.stages.base import GlobalStage, ShardIO, assemble

SEED = 0


def without_default_sample(section: dict) -> dict:
    """A section for the fingerprint: `kmeans_sample` at its default is the constant earlier
    versions used, so leaving it out keeps their run dirs' fingerprints (and their work)."""
    return {k: v for k, v in section.items() if not (k == "kmeans_sample" and v == KMEANS_SAMPLE)}


def _sample(io: ShardIO, shard: int, fraction: float) -> np.ndarray:
    rows = io.read(shard)
    if not rows.num_rows:
        return np.zeros((0, 0), np.float16)
    return stored(rows[C.CLIP_EMBEDDING].filter(pa.array(sampled(rows[C.ROW].to_numpy(), fraction, SEED))))


def _fit(k: int, *samples: np.ndarray) -> np.ndarray:
    sample = unit(np.concatenate([s for s in samples if len(s)]))
    return fit_centres(sample, k, np.random.default_rng(SEED))


def centres(tasks: Tasks, io: ShardIO, k: int, sample: int):
    """A reference to k-means centres fitted on about `sample` of the run's rows."""
    fraction = sample / max(io.rows, 1)
    return tasks.submit(_fit, k, *(tasks.submit(_sample, io, s, fraction) for s in range(io.shards)))


# image_based


def _targets(stage: GlobalStage, centres_: np.ndarray) -> tuple[np.ndarray, int]:
    reference = stage.reference(centres_.shape[1])
    return np.unique(nearest_centre(reference, centres_)), len(reference)


def _select(stage: GlobalStage, io: ShardIO, shard: int, started: float, centres_: np.ndarray,
            targets: tuple[np.ndarray, int]) -> list[dict]:
    rows = io.read(shard)
    labels = nearest_centre(unit(stored(rows[C.CLIP_EMBEDDING])), centres_) if rows.num_rows else np.zeros(0, np.int64)
    verdicts = stage.verdicts(labels, np.isin(labels, targets[0]), len(targets[0]), len(centres_), targets[1])
    return [io.write(shard, assemble(stage, rows, verdicts), started)]


def image_based(stage: GlobalStage, io: ShardIO, tasks: Tasks) -> list:
    """References to each pending shard's [stats]."""
    from mmcurate.filters.image_based import centres_wanted

    cfg = stage.config.quality.image_based
    started = time.time()
    fitted = centres(tasks, io, centres_wanted(io.rows, cfg.clusters), cfg.kmeans_sample)
    targets = tasks.submit(_targets, stage, fitted)
    return [tasks.submit(_select, stage, io, s, started, fitted, targets) for s in io.pending]


# semantic_dedup


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
    from mmcurate.stages.semantic_dedup import keepers

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
    from mmcurate.stages.semantic_dedup import semantic_verdicts

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


def semantic(stage: GlobalStage, io: ShardIO, tasks: Tasks, parts: int) -> list:
    """References to each pending shard's [stats]."""
    cfg = stage.config.dedup.semantic
    started = time.time()
    k = max(2, min(-(-io.rows // embeddings.CLUSTER_SIZE), cfg.kmeans_sample // 10))  # at least 10 sample rows a centre
    fitted = centres(tasks, io, k, cfg.kmeans_sample)
    routed = [submit_parts(tasks, parts, _route, io, s, parts, fitted) for s in range(io.shards)]
    found = [submit_parts(tasks, parts, _search, cfg.threshold, parts, *(r[p] for r in routed)) for p in range(parts)]
    del routed
    return [tasks.submit(_write, stage, io, s, started, *(f[s % parts] for f in found)) for s in io.pending]
