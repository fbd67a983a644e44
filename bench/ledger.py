"""The ledger in parts against one file: the build (parts written by Ray tasks against one file
written shard by shard on the driver), and `audit --uid` (the uid index's row groups found by
statistics, then the ledger row groups that hold the row) against a scan of the whole ledger.

Synthetic feature rows written straight into a run dir (`bench/scale.py`'s `write_run`), then
`jobs/ledger.build_ledger` over them twice, both measured in the same run on the same rows:
`--part-rows` (parts) and no limit (one file). Then `--queries` random uids looked up both ways.

    python bench/ledger.py [--rows 2000000] [--shard-rows 250000] [--part-rows 500000] [--cpus 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmcurate.engine import atomic  # noqa: E402
from mmcurate.engine.executor import RayTasks  # noqa: E402
from mmcurate.jobs.audit import ledger_rows, uid_rows  # noqa: E402
from mmcurate.jobs.ledger import build_ledger  # noqa: E402
from mmcurate.schemas import columns as C  # noqa: E402
from mmcurate.schemas.config import config_from_dict  # noqa: E402


def _scale():
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--shard-rows", type=int, default=250_000)
    ap.add_argument("--part-rows", type=int, default=500_000)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    import ray

    scale = _scale()
    tmp = Path(tempfile.mkdtemp(prefix="mmcurate-ledger-"))
    try:
        run_dir = scale.write_run(tmp / "run", args.rows, args.shard_rows, 2)
        done = json.loads(run_dir.ingest_done().read_text())
        atomic.write_json(run_dir.ingest_done(), {**done, "input": {"shard_size": args.shard_rows}})
        class Scored(scale.Features):  # what the ledger's `scores` carries from it
            score_columns = (C.CLIP_SCORE, C.LUMA_STD)

        stages = [Scored(config_from_dict({"input": {"path": "x"}}))]
        ray.init(num_cpus=args.cpus, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
        build_ledger(run_dir, stages, args.part_rows, RayTasks)  # warm: workers started, modules imported
        t0 = time.perf_counter()
        build_ledger(run_dir, stages, args.part_rows, RayTasks)
        parts_s = time.perf_counter() - t0
        files = len(list(run_dir.ledger.glob("part-*.parquet")))
        uids = pl.read_parquet(run_dir.ledger / "part-000000.parquet", columns=[C.UID]).sample(
            args.queries, seed=1)[C.UID].to_list()
        t0 = time.perf_counter()
        found = [ledger_rows(run_dir, uid_rows(run_dir, u)).num_rows for u in uids]
        index_s = (time.perf_counter() - t0) / len(uids)
        t0 = time.perf_counter()
        scanned = [pl.scan_parquet(run_dir.ledger / "*.parquet").filter(pl.col(C.UID) == u).collect().height for u in uids]
        scan_s = (time.perf_counter() - t0) / len(uids)
        assert found == scanned and all(found), (found, scanned)
        t0 = time.perf_counter()
        build_ledger(run_dir, stages, 10**15, RayTasks)
        one_s = time.perf_counter() - t0
        assert pq.ParquetFile(run_dir.ledger).metadata.num_rows == args.rows
        result = {"rows": args.rows, "parts": files, "cpus": args.cpus, "build_parts_s": round(parts_s, 2),
                  "build_one_file_s": round(one_s, 2), "build_speedup": round(one_s / parts_s, 2),
                  "audit_uid_index_ms": round(index_s * 1e3, 1), "audit_uid_scan_ms": round(scan_s * 1e3, 1),
                  "audit_speedup": round(scan_s / index_s, 1)}
        print(json.dumps(result))
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
