"""Semantic dedup and image-based selection as a dataflow of tasks (k-means on a bounded sample,
rows routed by cluster, oversized clusters split): against brute force, and the same rows kept
however the run is sharded."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmcurate.algos import embeddings as E
from mmcurate.algos.parallel import SerialTasks, serial
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.stages.image_based import ImageBasedStage
from mmcurate.stages.semantic_dedup import SemanticDedupStage
from tests.stages.test_dedup_flow import MemoryShards
from tests.stages.test_semantic_dedup import embeddings, table_of


def decided(stage, table: pa.Table, shard_rows: int, rows_per_partition: int) -> pa.Table:
    io = MemoryShards(table, shard_rows, rows_per_partition)
    stage.decide_shards(io, SerialTasks())
    return pa.concat_tables([io.out[s] for s in range(io.shards)])


def test_semantic_dedup_in_partitions_against_brute_force(monkeypatch):
    emb, _ = embeddings(18_000, 6_000, dim=32, seed=4)  # a third of the rows near copies, spread over the run
    order = np.random.default_rng(0).permutation(len(emb))
    emb = emb[order]
    table = table_of(emb, np.random.default_rng(1).random(len(emb)))
    stage = SemanticDedupStage(config_from_dict({"input": {"path": "x"}, "dedup": {"semantic": {
        "enabled": True, "threshold": 0.9, "kmeans_sample": 3_000}}}))
    monkeypatch.setattr(E, "EXACT_LIMIT", 10**6)  # the one-task path compares every pair: the truth
    truth = stage.decide(table, serial)
    monkeypatch.setattr(E, "EXACT_LIMIT", 20_000)  # above it, the run takes the partitioned path
    monkeypatch.setattr(E, "CLUSTER_SIZE", 800)  # 30 centres; clusters over 1,600 rows split again
    got = decided(stage, table, shard_rows=2_000, rows_per_partition=6_000)
    assert got.schema.equals(truth.schema) and got[C.ROW].equals(truth[C.ROW])
    want = {i for i, r in enumerate(truth[C.REASON].to_pylist()) if r}
    mine = {i for i, r in enumerate(got[C.REASON].to_pylist()) if r}
    assert len(want) > 5_000 and len(mine & want) >= 0.95 * len(want), (len(mine & want), len(want))
    # every drop is at or above the threshold to the keeper it names, which is kept
    uid = table[C.UID].to_pylist()
    at = {u: i for i, u in enumerate(uid)}
    kept = {uid[i] for i in range(len(uid)) if i not in mine}
    for i in mine:
        keeper = got[C.SEMANTIC_DUP_OF][i].as_py()
        assert keeper in kept and float(emb[i] @ emb[at[keeper]]) >= 0.9 - 1e-3
    # cut differently (shards, partitions), the same rows are dropped for the same keepers
    again = decided(stage, table, shard_rows=3_000, rows_per_partition=4_000)
    assert again.select([C.REASON, C.SEMANTIC_DUP_OF]).equals(got.select([C.REASON, C.SEMANTIC_DUP_OF]))


def test_image_based_in_partitions_keeps_the_reference_clusters(tmp_path):
    rng = np.random.default_rng(2)
    centres = E.unit(rng.normal(size=(8, 16)))
    label = rng.integers(0, 8, size=12_000)
    emb = E.unit(centres[label] + rng.normal(scale=0.05, size=(12_000, 16)))
    reference = tmp_path / "ref.parquet"
    targets = E.unit(centres[np.arange(600) % 3] + rng.normal(scale=0.05, size=(600, 16)))  # a target task's images
    pq.write_table(pa.table({"embedding": [e.tolist() for e in targets]}), reference)
    stage = ImageBasedStage(config_from_dict({"input": {"path": "x"}, "quality": {"image_based": {
        "enabled": True, "reference_path": str(reference), "clusters": 32, "kmeans_sample": 2_000}}}))
    table = table_of(emb, np.zeros(len(emb)))
    got = decided(stage, table, shard_rows=1_500, rows_per_partition=4_000)
    kept = np.array([r is None for r in got[C.REASON].to_pylist()])
    one_task = np.array([r is None for r in stage.decide(table, serial)[C.REASON].to_pylist()])
    assert (kept == (label < 3)).mean() > 0.99 and (kept == one_task).mean() > 0.99
    assert "reference images fall into" in got.filter(pa.array(~kept))[C.DETAIL][0].as_py()
