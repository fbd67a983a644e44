"""The global stages at 1M, 4M and 16M rows on a three-node Ray cluster: memory per task, the
driver's, wall time, and the decisions against the one-task path.

Synthetic feature rows (no images; `tests/scale_rows.py`: hashes with planted near copies across
shards, exact copies, a cluster of blank images; CLIP scores; 64-d embeddings, 20 % of them
near copies of others anywhere in the run) are written straight into a run dir's ingest and
features shards, as `mmcurate run` leaves them. Then `dedup` (exact + pHash, the dataflow of
`stages/dedup/flow.py`), `clip` with `min_percentile` (histogram passes, `algos/quantile.py`)
and `semantic_dedup` (k-means on a sample, rows routed by cluster) run through the engine's own
`GlobalShards`, on a local `ray.cluster_utils.Cluster` of `--nodes` nodes, with a fixed
`--rows-per-partition`. With `--check`, a `--brute-rows` run's semantic dedup in partitions of
10,000 is compared with every pair compared.

Memory: every task records the peak of what it allocated (tracemalloc: Python objects and numpy
arrays, which hold all of the dataflow's per-row state; not Arrow's buffers of the shard it
reads), per task kind (the coordinating task, `engine.runner.decide_on_worker`, included). As an upper bound, a sampler reads /proc every 50 ms for the Ray workers
of this cluster: their largest private memory (RssAnon, worker baseline and allocator slack
included; workers are reused, so it is not one task's). The driver's figure is its RssAnon peak
over the stage minus before it.

Goals (issue 17): at a fixed rows per partition the largest task's peak stays within +-25 % while
n grows 16x; no task above 2 GB at 16M; the driver flat; decisions identical at 1M (`--check`;
semantic dedup: its recall against brute force).

    python bench/scale.py [--sizes 1000000,4000000,16000000] [--radius 2] [--check]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmcurate.algos.parallel import serial  # noqa: E402
from mmcurate.engine import atomic  # noqa: E402
from mmcurate.engine.rundir import INGEST, RunDir  # noqa: E402
from mmcurate.engine.shards import GlobalShards, shard_stats  # noqa: E402
from mmcurate.schemas import columns as C  # noqa: E402
from mmcurate.schemas.config import config_from_dict  # noqa: E402
from mmcurate.stages.base import Stage  # noqa: E402
from mmcurate.stages.clip import ClipFilterStage  # noqa: E402
from mmcurate.stages.dedup.stage import DedupStage  # noqa: E402
from mmcurate.stages.semantic_dedup import SemanticDedupStage  # noqa: E402
from tests.jobs.test_resume import descendants  # noqa: E402
from tests.scale_rows import pool, rows  # noqa: E402

DATA = (C.SHA256, C.PHASH, C.DHASH, C.LUMA_STD, C.COLOUR, C.ORIGINAL_WIDTH, C.ORIGINAL_HEIGHT, C.CLIP_SCORE,
        C.CLIP_EMBEDDING)
DIM = 64  # embedding width: memory per row of the semantic tasks grows with it (512-d: 8x the embeddings)


class Features(Stage):
    """The stored shape of the stages before dedup and clip: every column they read."""

    name = "features"
    data_columns = DATA
    output_schema = pa.schema(C.IDENTITY_FIELDS + C.DECISION_FIELDS + [
        pa.field(C.SHA256, pa.string()), pa.field(C.PHASH, pa.string()), pa.field(C.DHASH, pa.string()),
        pa.field(C.LUMA_STD, pa.float32()), pa.field(C.COLOUR, pa.binary()), pa.field(C.ORIGINAL_WIDTH, pa.int32()),
        pa.field(C.ORIGINAL_HEIGHT, pa.int32()), pa.field(C.CLIP_SCORE, pa.float32()),
        pa.field(C.CLIP_EMBEDDING, pa.list_(pa.float16()))])


def embeddings(n: int, seed: int, originals: np.ndarray, near: float = 0.2) -> pa.Array:
    """n unit vectors, `near` of them within cosine ~0.99 of one of `originals` (copies that land in
    any shard), as the list<float16> column clip_embed stores."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, DIM)).astype(np.float32)
    dst = rng.random(n) < near
    emb[dst] = originals[rng.integers(0, len(originals), int(dst.sum()))] + rng.normal(scale=0.02, size=(int(dst.sum()), DIM))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * DIM), pa.array(emb.astype(np.float16).reshape(-1)))


def write_run(root: Path, n: int, shard_rows: int, radius: int) -> RunDir:
    run_dir = RunDir(root)
    stage = Features(config_from_dict({"input": {"path": "x"}}))
    originals = pool(max(n // 20, 1000))
    emb_originals = np.random.default_rng(54321).normal(size=(max(n // 20, 1000), DIM))
    emb_originals /= np.linalg.norm(emb_originals, axis=1, keepdims=True)
    shards = math.ceil(n / shard_rows)
    for s in range(shards):
        size = min(shard_rows, n - s * shard_rows)
        t = rows(size, seed=s, start=s * shard_rows, originals=originals, max_flips=radius + 1)
        scores = np.random.default_rng(10_000 + s).normal(0.3, 0.05, size).astype(np.float32)
        ingest = pa.table({C.UID: t[C.UID], C.ROW: t[C.ROW], C.SOURCE: pa.nulls(size, pa.string()),
                           C.SOURCE_LINE: t[C.ROW], C.URL: pa.nulls(size, pa.string()), C.CAPTION: pa.nulls(size, pa.string()),
                           C.STATUS: pa.array([C.KEPT] * size), C.REASON: pa.nulls(size, pa.string()),
                           C.DETAIL: pa.nulls(size, pa.string())}).cast(C.INGEST_SCHEMA)
        atomic.write_parquet(run_dir.shard_file(INGEST, s), ingest)
        out = t.append_column(C.CLIP_SCORE, pa.array(scores)).append_column(C.CLIP_EMBEDDING, embeddings(size, 20_000 + s, emb_originals))
        out = out.append_column(C.STATUS, pa.array([C.KEPT] * size)).append_column(C.REASON, pa.nulls(size, pa.string()))
        out = out.append_column(C.DETAIL, pa.nulls(size, pa.string()))
        atomic.write_parquet(run_dir.shard_file(stage.name, s), out.select(stage.output_schema.names).cast(stage.output_schema))
        atomic.write_json(run_dir.stats_file(stage.name, s), shard_stats(stage.name, s, out, 0.0))
    atomic.write_json(run_dir.ingest_done(), {"shards": shards, "rows": n})
    return run_dir


def _status(pid: str) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return out


class Sampler(threading.Thread):
    """Peak private memory per Ray task kind (from the worker's title) and of this driver."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak: dict[str, int] = {}
        self.driver_before = _status("self").get("RssAnon", 0)
        self.driver_peak = self.driver_before
        self.halt = threading.Event()
        self.ours: set[int] = set()

    def run(self) -> None:
        while not self.halt.wait(0.05):
            self.ours = descendants(os.getpid())
            self.driver_peak = max(self.driver_peak, _status(str(os.getpid())).get("RssAnon", 0))
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                except OSError:
                    continue
                m = re.match(r"ray::(_\w+)", title)  # this bench's tasks (not Ray's own actors)
                if not m or int(pid) not in self.ours:
                    continue
                anon = _status(pid).get("RssAnon", 0)
                self.peak[m.group(1)] = max(self.peak.get(m.group(1), 0), anon)

    def stop(self) -> dict:
        self.halt.set()
        self.join()
        return {"worker_rss_mb": round(max(self.peak.values(), default=0) / 2**20),
                "driver_growth_mb": round((self.driver_peak - self.driver_before) / 2**20)}


MEASURED = Path(tempfile.gettempdir()) / "mmcurate-scale-tasks"


def _measured(fn, *args):
    """fn(*args), recording the peak of what it allocated (Python objects and numpy arrays)."""
    import tracemalloc
    import uuid

    tracemalloc.start()
    try:
        return fn(*args)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        MEASURED.mkdir(exist_ok=True)
        name = (args[0] if fn.__name__ == "_first" else fn).__name__
        (MEASURED / f"{uuid.uuid4().hex}.json").write_text(json.dumps({"task": name, "peak": peak}))


def measured_tasks():
    from mmcurate.engine.executor import RayTasks

    class Measured(RayTasks):
        def submit(self, fn, *args, returns=1):
            return super().submit(_measured, fn, *args, returns=returns)

    return Measured()


def task_peaks() -> dict[str, int]:
    peaks: dict[str, int] = {}
    for f in MEASURED.glob("*.json"):
        d = json.loads(f.read_text())
        peaks[d["task"]] = max(peaks.get(d["task"], 0), d["peak"])
        f.unlink()
    return peaks


def run_stage(stage, run_dir: RunDir, n: int, rows_per_partition: int, tasks) -> dict:
    shards = run_dir.shard_count()
    upstream = [Features(stage.config)]
    io = GlobalShards(str(run_dir.root), stage, upstream, shards, list(range(shards)), n, rows_per_partition)
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    import ray

    from mmcurate.engine.runner import decide_on_worker

    stats = ray.get(ray.remote(num_cpus=1)(decide_on_worker).remote(stage, io, tasks))  # as the engine runs it
    wall = time.perf_counter() - start
    reasons: dict[str, int] = {}
    for s in stats:
        for r, c in s["reasons"].items():
            reasons[r] = reasons.get(r, 0) + c
    peaks = task_peaks()
    return {"wall_s": round(wall, 1), "reasons": reasons,
            "task_peak_mb": {k: round(v / 2**20, 1) for k, v in sorted(peaks.items(), key=lambda kv: -kv[1])},
            "largest_task_mb": round(max(peaks.values(), default=0) / 2**20, 1), **sampler.stop()}


def one_task(stage, run_dir: RunDir) -> pa.Table:
    """Today's single-task decision over every row, for the comparison."""
    io = GlobalShards(str(run_dir.root), stage, [Features(stage.config)], run_dir.shard_count(), [], 0, 1)
    rows_ = pa.concat_tables([io.read(s) for s in range(io.shards)])
    return stage.decide(rows_, serial)


def semantic_against_brute_force(root: Path, stage, tasks, n: int) -> dict:
    """Semantic dedup partitioned (10,000 rows per partition, the default clusters of ~5,000) on
    an n-row run against every pair compared: which drops it finds, and that each is real."""
    from mmcurate.algos import embeddings as E

    run_dir = write_run(root, n, max(n // 10, 1), 2)
    got = run_stage(stage, run_dir, n, 10_000, tasks)
    mine = pa.concat_tables([run_dir.read_shard(stage.name, s) for s in range(run_dir.shard_count())])
    limit, E.EXACT_LIMIT = E.EXACT_LIMIT, 10**12
    try:
        truth = one_task(stage, run_dir)
    finally:
        E.EXACT_LIMIT = limit
    want = set(truth.filter(pc.is_valid(truth[C.REASON]))[C.ROW].to_pylist())
    found = mine.filter(pc.is_valid(mine[C.REASON]))
    rows_ = pa.concat_tables([GlobalShards(str(run_dir.root), stage, [Features(stage.config)], run_dir.shard_count(), [], 0, 1).read(s)
                              for s in range(run_dir.shard_count())])
    emb = E.embeddings_of(rows_[C.CLIP_EMBEDDING])
    at = {u: i for i, u in enumerate(rows_[C.UID].to_pylist())}
    sims = [float(emb[at[u]] @ emb[at[k]]) for u, k in zip(found[C.UID].to_pylist(), found[C.SEMANTIC_DUP_OF].to_pylist())]
    shutil.rmtree(root)
    mine_rows = set(found[C.ROW].to_pylist())
    return {"rows": n, "wall_s": got["wall_s"], "brute_force_drops": len(want), "partitioned_drops": len(mine_rows),
            "recall": round(len(mine_rows & want) / max(len(want), 1), 4),
            "drops_at_or_above_threshold": round(sum(x >= 0.95 - 1e-3 for x in sims) / max(len(sims), 1), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000000,4000000,16000000")
    ap.add_argument("--shard-rows", type=int, default=250_000)
    ap.add_argument("--rows-per-partition", type=int, default=500_000)
    ap.add_argument("--radius", type=int, default=2, help="dedup.phash.max_distance (dHash off)")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--check", action="store_true", help="compare with the one-task path at the smallest size")
    ap.add_argument("--brute-rows", type=int, default=50_000, help="rows of the semantic dedup run compared with brute force")
    ap.add_argument("--out", default=None, help="write the figures here as JSON")
    args = ap.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "object_store_memory": 3 * 2**30})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=1, object_store_memory=3 * 2**30)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    tasks = measured_tasks()
    config = config_from_dict({"input": {"path": "x"}, "dedup": {"phash": {"max_distance": args.radius, "dhash_distance": None},
                                                                 "semantic": {"enabled": True, "threshold": 0.95}},
                               "clip": {"min_score": None, "min_percentile": 30}})
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="mmcurate-scale-"))
    try:
        for i, n in enumerate(int(float(x)) for x in args.sizes.split(",")):
            root = tmp / f"n{n}"
            t0 = time.perf_counter()
            run_dir = write_run(root, n, args.shard_rows, args.radius)
            row = {"rows": n, "shards": run_dir.shard_count(), "partitions": math.ceil(n / args.rows_per_partition),
                   "write_s": round(time.perf_counter() - t0, 1)}
            for stage in (DedupStage(config), ClipFilterStage(config), SemanticDedupStage(config)):
                row[stage.name] = run_stage(stage, run_dir, n, args.rows_per_partition, tasks)
                if args.check and i == 0 and stage.name != "semantic_dedup":
                    want = one_task(stage, run_dir)
                    got = pa.concat_tables([run_dir.read_shard(stage.name, s).select(want.column_names)
                                            for s in range(run_dir.shard_count())])
                    row[stage.name]["identical_to_one_task"] = got.equals(want.cast(got.schema))
                if stage.name == "clip":
                    row["clip"]["threshold"] = pc.max(run_dir.read_shard("clip", 0)[C.CLIP_THRESHOLD]).as_py()
            print(json.dumps(row), flush=True)
            results.append(row)
            shutil.rmtree(root)
        if args.check:
            semantic = semantic_against_brute_force(tmp / "brute", SemanticDedupStage(config), tasks, args.brute_rows)
            print(json.dumps({"semantic_against_brute_force": semantic}), flush=True)
            results.append({"semantic_against_brute_force": semantic})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        ray.shutdown()
        cluster.shutdown()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    base = results[0]
    for r in results[1:]:
        for name in ("dedup", "clip", "semantic_dedup"):
            if name not in r:
                continue
            print(f"{name}: {r['rows']:,} vs {base['rows']:,} rows: largest task {r[name]['largest_task_mb']} MB vs "
                  f"{base[name]['largest_task_mb']} MB ({r[name]['largest_task_mb'] / max(base[name]['largest_task_mb'], 1):.2f}x), "
                  f"driver +{r[name]['driver_growth_mb']} MB, wall {r[name]['wall_s']} s")


if __name__ == "__main__":
    main()
