"""Dedup quality through `mmcurate run` on real photographs and their web transformations, with
hard negatives (distinct overlapping crops of flat-dominated regions): recall >= 0.95 at
precision >= 0.99, with duplicates spread over shards and Ray workers, and the
same decisions when dedup runs partitioned."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from mmcurate.demo.server import ImageServer, Route
from tests.conftest import SAFETY_OFF, run_cli
from tests.dedup_eval import build, hard_negatives, precision_recall

pytestmark = pytest.mark.slow
SHARD = 40


def test_precision_recall_across_shards_and_workers(tmp_path):
    items = build(seed=0) + hard_negatives(seed=1)
    order = np.random.default_rng(1).permutation(len(items))  # group members land in different shards
    with ImageServer({f"/e/{name}": Route(data) for name, data, _ in items}) as server:
        rows = [{"url": server.url(f"/e/{items[i][0]}"), "caption": items[i][0]} for i in order]
        (tmp_path / "urls.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        config = {"input": {"path": str(tmp_path / "urls.jsonl"), "shard_size": SHARD},
                  "download": {"allow_networks": ["127.0.0.1/32"]}, "clip": {"enabled": False}, "export": {"formats": []},
                  **SAFETY_OFF}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"), "--quiet")
        assert proc.returncode == 0, proc.stderr
        group_of_url = {server.url(f"/e/{name}"): group for name, _, group in items}
        # the same run with dedup partitioned (engine.rows_per_partition: a dataflow of Ray tasks
        # in which no task holds every row) decides exactly the same
        proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "parts"), "--quiet",
                       "--set", "engine.rows_per_partition=60")
        assert proc.returncode == 0, proc.stderr
    assert pq.read_table(tmp_path / "parts" / "ledger.parquet").equals(pq.read_table(tmp_path / "run" / "ledger.parquet"))

    ledger = pq.read_table(tmp_path / "run" / "ledger.parquet").to_pylist()
    result = precision_recall(ledger, group_of_url)
    print(f"\ndedup eval: {json.dumps({k: v for k, v in result.items() if k != 'false_drops'})}")
    assert result["precision"] >= 0.99, result["false_drops"]
    assert result["recall"] >= 0.95

    row_of = {r["uid"]: r["row"] for r in ledger}
    dropped = [r for r in ledger if r["reason"] in ("near_duplicate", "exact_duplicate")]
    cross_shard = [r for r in dropped if r["row"] // SHARD != row_of[r["scores"]["dup_of"]] // SHARD]
    assert len(cross_shard) >= len(dropped) // 2

    stats_dir = tmp_path / "run" / "stages" / "download"  # the stage that fetched and stored each image
    worker = {int(p.name[:6]): json.loads(p.read_text())["worker"] for p in stats_dir.glob("*.stats.json")}
    assert len(set(worker.values())) >= 2, worker
    cross_worker = [r for r in cross_shard if worker[r["row"] // SHARD] != worker[row_of[r["scores"]["dup_of"]] // SHARD]]
    assert cross_worker, "no duplicate pair whose hashes were computed on different workers"
