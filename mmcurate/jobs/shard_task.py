"""Running one stage on one shard: read what is alive, decide, write output and stats atomically."""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from mmcurate import atomic
from mmcurate.jobs.rundir import RunDir
from mmcurate.jobs.views import alive_rows, check_aligned
from mmcurate.pipelines.stage import GlobalStage, Stage
from mmcurate.schemas import columns as C


def shard_stats(stage: str, shard: int, out: pa.Table, seconds: float) -> dict:
    """The statistics of one stage on one shard (also its resume marker)."""
    status = Counter(out[C.STATUS].to_pylist())
    reasons = Counter(r for r in out[C.REASON].to_pylist() if r is not None)
    return {
        "stage": stage,
        "shard": shard,
        "rows_in": out.num_rows,
        C.KEPT: status[C.KEPT],
        C.DROPPED: status[C.DROPPED],
        C.FAILED: status[C.FAILED],
        "reasons": dict(sorted(reasons.items())),
        "seconds": round(seconds, 4),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


@dataclass
class ShardTask:
    """A picklable unit of work: `stage` over one shard of the run at `root`."""

    root: str
    stage: Stage
    upstream: list[Stage] = field(default_factory=list)

    def setup(self) -> None:
        """Load the stage's models once per worker."""
        self.stage.setup()

    def __call__(self, shard: int) -> dict:
        run_dir = RunDir(Path(self.root))
        name = self.stage.name
        if run_dir.is_done(name, shard):  # a retried task after its output landed
            return run_dir.read_stats(name, shard)
        start = time.perf_counter()
        self.stage.run_root, self.stage.shard = self.root, shard
        rows = alive_rows(run_dir, shard, self.upstream, self.stage.input_columns)
        out = self.stage.process(rows)
        check_aligned(name, rows, out)
        return write_stage_shard(run_dir, self.stage, shard, out, time.perf_counter() - start)


def decide_global(root: str, stage: GlobalStage, upstream: list[Stage], pending: list[int]) -> list[dict]:
    """A global stage over every shard of the run at `root`; writes the `pending` shards' outputs.

    Runs inside one worker task. Each shard's alive rows are read with only the columns the
    stage names (not the captions and URLs every row carries), concatenated, decided, and the
    result split back into shard files; each shard gets the stage's time divided evenly.
    """
    import pyarrow as pa

    from mmcurate.pipelines import executor

    run_dir = RunDir(Path(root))
    start = time.perf_counter()
    keep = [C.UID, C.ROW, *(stage.input_columns or ())]
    parts = []
    for shard in range(run_dir.shard_count()):
        part = alive_rows(run_dir, shard, upstream, stage.input_columns)
        parts.append(part.select([c for c in part.column_names if c in keep]))
    rows = pa.concat_tables(parts)
    stage.run_root = root
    stage.setup()
    out = stage.decide(rows, executor.map_tasks)
    check_aligned(stage.name, rows, out)
    seconds = (time.perf_counter() - start) / max(len(parts), 1)
    stats, offset, todo = [], 0, set(pending)
    for shard, part in enumerate(parts):
        if shard in todo:
            stats.append(write_stage_shard(run_dir, stage, shard, out.slice(offset, part.num_rows), seconds))
        offset += part.num_rows
    return stats


def write_stage_shard(run_dir: RunDir, stage: Stage, shard: int, out: pa.Table, seconds: float) -> dict:
    """Write a stage's output for one shard, then its stats (the resume marker); return the stats."""
    bad = set(out[C.STATUS].to_pylist()) - set(C.STATUSES)
    if bad:
        raise RuntimeError(f"stage {stage.name!r} produced unknown statuses {sorted(bad)}")
    atomic.write_parquet(run_dir.shard_file(stage.name, shard), out.cast(stage.output_schema))
    stats = shard_stats(stage.name, shard, out, seconds)
    atomic.write_json(run_dir.stats_file(stage.name, shard), stats)
    return stats
