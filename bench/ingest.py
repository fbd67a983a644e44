"""Ingest in tasks against ingest in one unit, on the same input in the same run: rows per second
reading, checking and numbering a URL list (parquet, row groups) into shards; and the input's
fingerprint on resume (per-file records, stat only) against hashing every byte again (how run dirs
made before the records are still checked).

    python bench/ingest.py [--rows 4000000] [--files 8] [--row-group 250000] [--cpus 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmcurate import ingest  # noqa: E402
from mmcurate.engine.executor import RayTasks  # noqa: E402
from mmcurate.engine.rundir import RunDir  # noqa: E402
from mmcurate.jobs.ingest import fingerprint_input, ingest_input  # noqa: E402
from mmcurate.schemas.config import InputConfig  # noqa: E402


def write_input(folder: Path, rows: int, files: int, row_group: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per = rows // files
    out = []
    for f in range(files):
        ids = np.arange(f * per, (f + 1) * per)
        words = rng.integers(0, 5000, size=per)
        table = pa.table({"url": [f"https://img{i % 97}.example.com/p/{i}.jpg" for i in ids],
                          "caption": [f"a photo of item {w} on a table, number {i}" for w, i in zip(words, ids)]})
        pq.write_table(table, folder / f"part-{f:03d}.parquet", row_group_size=row_group)
        out.append(folder / f"part-{f:03d}.parquet")
    return out


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--row-group", type=int, default=250_000)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="mmcurate-ingest-"))
    try:
        files = write_input(tmp / "input", args.rows, args.files, args.row_group)
        cfg = InputConfig(path=str(tmp / "input" / "*.parquet"), shard_size=args.shard_size)
        ray.init(num_cpus=args.cpus, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
        many, one = RunDir.at(tmp / "many"), RunDir.at(tmp / "one")
        ingest_input(many, cfg, files[:1], args.row_group, RayTasks)  # warm: workers up, modules imported
        t_many = timed(lambda: ingest_input(many, cfg, files, args.row_group, RayTasks))
        # one unit per file, files in sequence on the driver: what ingest did before it had tasks
        ingest_input(one, cfg, files[:1], 10**15, None)
        t_one = timed(lambda: ingest_input(one, cfg, files, 10**15, None))
        same = all(pq.read_table(many.shard_file("ingest", s)).equals(pq.read_table(one.shard_file("ingest", s)))
                   for s in (0, args.rows // args.shard_size // 2, args.rows // args.shard_size - 1))
        units = len(ingest.units(files, args.row_group))
        _, records = fingerprint_input(files, None)
        done = {"fingerprint_version": 2, "input_files": records}
        t_records = timed(lambda: fingerprint_input(files, done))
        t_bytes = timed(lambda: ingest.fingerprint(files))
        size = sum(f.stat().st_size for f in files)
        print(json.dumps({
            "rows": args.rows, "files": args.files, "units": units, "cpus": args.cpus, "input_mb": round(size / 2**20, 1),
            "tasks_s": round(t_many, 2), "one_reader_s": round(t_one, 2), "speedup": round(t_one / t_many, 2),
            "tasks_rows_per_s": round(args.rows / t_many), "one_reader_rows_per_s": round(args.rows / t_one),
            "shards_identical": same, "resume_fingerprint_ms": round(t_records * 1e3, 2),
            "rehash_every_byte_ms": round(t_bytes * 1e3, 1)}))
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
