"""Dedup as a partitioned dataflow makes the one-task path's decisions, and its band search
misses no pair (synthetic hashes: no images needed to test the bookkeeping at this size)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mmcurate.algos import hamming, partition
from mmcurate.algos.parallel import SerialTasks, serial
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.stages.dedup import flow
from mmcurate.stages.dedup.stage import DedupStage
from tests.algos.test_components import scipy_labels
from tests.scale_rows import flip, rows


class MemoryShards:
    """`ShardIO` over tables in memory (for SerialTasks: every task runs in this process)."""

    def __init__(self, table: pa.Table, shard_rows: int, rows_per_partition: int):
        self.tables = [table.slice(i, shard_rows) for i in range(0, table.num_rows, shard_rows)]
        self.shards, self.pending = len(self.tables), list(range(len(self.tables)))
        self.rows, self.rows_per_partition, self.out = table.num_rows, rows_per_partition, {}

    def read(self, shard: int) -> pa.Table:
        return self.tables[shard]

    def write(self, shard: int, out: pa.Table, started: float) -> dict:
        self.out[shard] = out
        return {"shard": shard}


def stage(**phash) -> DedupStage:
    return DedupStage(config_from_dict({"input": {"path": "x"}, "dedup": {"phash": phash}}))


@pytest.mark.parametrize("phash", [{"keep": "largest"}, {"keep": "first", "max_distance": 4, "dhash_distance": None}])
def test_partitioned_decisions_equal_one_task_on_200k_rows(phash, monkeypatch):
    table = rows(200_000, seed=3)
    dedup = stage(**phash)
    want = dedup.decide(table, serial)
    monkeypatch.setattr(flow, "HOT", 50)  # the blank images' band keys are hot: joined as stars
    io = MemoryShards(table, shard_rows=10_000, rows_per_partition=25_000)
    refs = dedup.decide_shards(io, SerialTasks())
    assert len(refs) == io.shards == 20
    got = pa.concat_tables([io.out[s] for s in range(io.shards)])
    reasons = want[C.REASON].value_counts().to_pylist()
    counts = {r["values"]: r["counts"] for r in reasons}
    assert counts["near_duplicate"] > 10_000 and counts["exact_duplicate"] > 5_000, counts
    assert got.equals(want)
    # dropped rows name keepers in other shards: the pairs crossed partitions
    row_of = dict(zip(table[C.UID].to_pylist(), table[C.ROW].to_pylist()))
    dropped = got.filter(pa.compute.equal(got[C.REASON], "near_duplicate")).to_pylist()
    assert sum(r[C.ROW] // 10_000 != row_of[r[C.DUP_OF]] // 10_000 for r in dropped) > len(dropped) // 2


@pytest.mark.parametrize("hot", [10**9, 3])
def test_band_search_misses_no_pair_against_brute_force(hot, monkeypatch):
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2**64, size=20_000, dtype=np.uint64)
    base[10_000:] = flip(base[rng.integers(0, 10_000, size=10_000)], rng, 12)  # pairs at 0..12 bits
    values = np.unique(base)
    reps = np.arange(len(values), dtype=np.int64)
    parts = 5
    uniq = partition.split({"value": values, "rep": reps}, partition.bucket(values, parts), parts)
    monkeypatch.setattr(flow, "HOT", hot)
    tasks = SerialTasks()
    edges = np.concatenate(flow.band_search(tasks, uniq, 8, len(values), parts))
    brute = hamming.brute_force_pairs(values, 8)[:, :2]
    assert len(brute) > 5_000
    if hot > len(values):  # every candidate verified: exactly the pairs within 8
        assert set(map(tuple, edges.tolist())) == set(map(tuple, brute.tolist()))
    else:  # hot keys joined as stars: every pair within 8 still in one group
        label = scipy_labels(edges)
        assert all(label.get(i, -1) == label.get(j, -2) for i, j in brute.tolist())
