"""Running a stage over the shards of a run: per-shard tasks, the global task, resume, totals.

A per-shard stage becomes a `ShardTask` mapped over the pending shards by the Ray adapter; a
global stage is decided in one Ray task on a worker (`decide_global`), never on the driver, which
only waits: its memory does not grow with the input. Either way a shard's output and stats
appear atomically, and a rerun skips the shards whose stats exist.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from mmcurate.engine import atomic
from mmcurate.engine.executor import RaySession
from mmcurate.engine.rundir import RunDir
from mmcurate.engine.shards import alive_rows, check_aligned, write_stage_shard
from mmcurate.schemas import columns as C
from mmcurate.stages.base import GlobalStage, ShardContext, Stage

log = logging.getLogger(__name__)


class Progress(Protocol):
    """Receives progress events; the command line draws them, nothing below it prints."""

    def begin(self, stage: str, total: int, done: int) -> None: ...
    def advance(self, stage: str, stats: dict) -> None: ...
    def end(self, stage: str) -> None: ...


class NoProgress:
    def begin(self, stage: str, total: int, done: int) -> None: ...
    def advance(self, stage: str, stats: dict) -> None: ...
    def end(self, stage: str) -> None: ...


def process_shard(run_dir: RunDir, stage: Stage, shard: int, rows: pa.Table, start: float | None = None) -> dict:
    """Run `stage` on the alive `rows` of `shard` and store what it made; return the shard's stats."""
    start = time.perf_counter() if start is None else start
    stage.context = ShardContext(shard, run_dir.cache_file(stage.name, shard))
    out = stage.process(rows)
    check_aligned(stage.name, rows, out)
    return write_stage_shard(run_dir, stage, shard, out, time.perf_counter() - start, stage.context.side_tables)


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
        if run_dir.is_done(self.stage.name, shard):  # a retried task after its output landed
            return run_dir.read_stats(self.stage.name, shard)
        start = time.perf_counter()
        rows = alive_rows(run_dir, shard, self.upstream, self.stage.input_columns)
        return process_shard(run_dir, self.stage, shard, rows, start)


def decide_global(root: str, stage: GlobalStage, upstream: list[Stage], pending: list[int]) -> list[dict]:
    """A global stage over every shard of the run at `root`; writes the `pending` shards' outputs.

    Runs inside one worker task. Each shard's alive rows are read with only the columns the
    stage names (not the captions and URLs every row carries), concatenated, decided, and the
    result split back into shard files; each shard gets the stage's time divided evenly.
    """
    from mmcurate.engine import executor

    run_dir = RunDir(Path(root))
    start = time.perf_counter()
    keep = [C.UID, C.ROW, *(stage.input_columns or ())]
    parts = []
    for shard in range(run_dir.shard_count()):
        part = alive_rows(run_dir, shard, upstream, stage.input_columns)
        parts.append(part.select([c for c in part.column_names if c in keep]))
    rows = pa.concat_tables(parts)
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


def prepare_stage(run_dir: RunDir, name: str, fingerprint: str, outputs: Sequence[Path] = ()) -> None:
    """Wipe a stage's shards (and `outputs` it writes elsewhere) made under another fingerprint
    (only reachable with --force), and record the fingerprint its shards are made under."""
    meta = run_dir.stage_meta(name)
    if meta.exists() and json.loads(meta.read_text()).get("fingerprint") != fingerprint:
        log.warning("stage %s: configuration changed, redoing it", name)
        shutil.rmtree(run_dir.stage_dir(name))
        for path in outputs:
            shutil.rmtree(path, ignore_errors=True)
    atomic.write_json(meta, {"stage": name, "fingerprint": fingerprint})


# work(pending shards, on_done(stats)): computes the pending shards, reporting each as it lands
Work = Callable[[list[int], Callable[[dict], None]], None]


def run_shards(run_dir: RunDir, name: str, work: Work, fingerprint: str, shards: int, progress: Progress,
               outputs: Sequence[Path] = ()) -> dict:
    """`work` over the shards not yet done under `fingerprint`; the stage's totals for the manifest."""
    prepare_stage(run_dir, name, fingerprint, outputs)
    pending = [s for s in range(shards) if not run_dir.is_done(name, s)]
    start = time.perf_counter()
    progress.begin(name, shards, shards - len(pending))
    if pending:
        work(pending, lambda stats: progress.advance(name, stats))
    progress.end(name)
    seconds = time.perf_counter() - start
    all_stats = [run_dir.read_stats(name, s) for s in range(shards)]
    totals = {"rows_in": 0, C.KEPT: 0, C.DROPPED: 0, C.FAILED: 0}
    reasons: dict[str, int] = {}
    for stats in all_stats:
        for k in totals:
            totals[k] += stats.get(k, 0)
        for r, n in stats.get("reasons", {}).items():
            reasons[r] = reasons.get(r, 0) + n
    rows_this_run = sum(all_stats[s]["rows_in"] for s in pending)
    return {
        "status": "done",
        "fingerprint": fingerprint,
        "shards_total": shards,
        "shards_done": shards,
        "shards_this_run": len(pending),
        **totals,
        "reasons": dict(sorted(reasons.items())),
        "seconds_this_run": round(seconds, 3),
        "rows_per_s_this_run": round(rows_this_run / seconds, 2) if pending and seconds > 0 else None,
        "shard_seconds": round(sum(stats.get("seconds", 0) for stats in all_stats), 3),
    }


def run_stage(run_dir: RunDir, ray: RaySession, stage: Stage, upstream: Sequence[Stage], fingerprint: str,
              shards: int, progress: Progress) -> dict:
    """One stage over every shard of the run, resuming what is done; returns its manifest entry."""
    root, upstream = str(run_dir.root), list(upstream)
    if isinstance(stage, GlobalStage):
        def work(pending: list[int], on_done: Callable[[dict], None]) -> None:
            for stats in ray.run_remote(decide_global, root, stage, upstream, pending):
                on_done(stats)
    else:
        def work(pending: list[int], on_done: Callable[[dict], None]) -> None:
            ray.map_shards(ShardTask(root, stage, upstream), pending, stage.resources(ray.cluster()), on_done)
    return run_shards(run_dir, stage.name, work, fingerprint, shards, progress)
