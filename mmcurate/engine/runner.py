"""Running stages over the shards of a run: streaming segments, the global task, resume, totals.

The per-shard stages of a segment (`engine/plan.py`) become `ShardTask`s chained into one
streaming pipeline over the pending shards by the Ray adapter: shard k is in the second stage
while shard k+1 is in the first. A global stage decides as a dataflow of worker tasks
(`GlobalStage.decide_shards`), never on the driver, which holds only references: its memory does
not grow with the input. Either way a shard's output and stats appear atomically, and a rerun skips the shards
whose stats exist.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from mmcurate.algos.parallel import Tasks
from mmcurate.engine import atomic
from mmcurate.engine.executor import RaySession, ShardFailure
from mmcurate.engine.plan import is_barrier, split
from mmcurate.engine.rundir import RunDir
from mmcurate.engine.shards import GlobalShards, alive_count, alive_rows, check_aligned, write_stage_shard
from mmcurate.schemas import columns as C
from mmcurate.schemas.errors import MmcurateError
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


def process_shard(run_dir: RunDir, stage: Stage, shard: int, rows: pa.Table,
                  start: tuple[float, float] | None = None) -> dict:
    """Run `stage` on the alive `rows` of `shard` and store what it made; return the shard's stats.
    `start` is (time.time(), time.perf_counter()) when the shard was begun (before its rows were read)."""
    start = start or (time.time(), time.perf_counter())
    stage.context = ShardContext(shard, run_dir.cache_file(stage.name, shard))
    out = stage.process(rows)
    check_aligned(stage.name, rows, out)
    return write_stage_shard(run_dir, stage, shard, out, time.perf_counter() - start[1], stage.context.side_tables,
                             started=start[0], extra=stage.context.stats)


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
        run_dir = RunDir.at(self.root)
        if run_dir.is_done(self.stage.name, shard):  # a retried task after its output landed
            return run_dir.read_stats(self.stage.name, shard)
        start = (time.time(), time.perf_counter())
        rows = alive_rows(run_dir, shard, self.upstream, self.stage.input_columns, self.stage.ingest_columns,
                          self.stage.optional_inputs)
        return process_shard(run_dir, self.stage, shard, rows, start)


def decide_on_worker(stage: GlobalStage, io: GlobalShards, tasks: Tasks) -> list[dict]:
    """A global stage's dataflow, submitted from a worker task: that worker owns the small results
    its tasks hand on (Ray keeps those with their owner), so the driver's memory stays flat."""
    return [stats for ref in stage.decide_shards(io, tasks) for stats in tasks.get(ref)]


def prepare_stage(run_dir: RunDir, name: str, fingerprint: str, outputs: Sequence[Path] = ()) -> None:
    """Wipe a stage's shards (and `outputs` it writes elsewhere) made under another fingerprint
    (only reachable with --force), and record the fingerprint its shards are made under."""
    meta = run_dir.stage_meta(name)
    if meta.exists() and json.loads(meta.read_text()).get("fingerprint") != fingerprint:
        log.warning("stage %s: configuration changed, redoing it", name)
        atomic.remove(run_dir.stage_dir(name))
        for path in outputs:
            atomic.remove(path)
    atomic.write_json(meta, {"stage": name, "fingerprint": fingerprint})


# work(pending shards, on_done(stats)): computes the pending shards, reporting each as it lands
Work = Callable[[list[int], Callable[[dict], None]], None]


def run_shards(run_dir: RunDir, name: str, work: Work, fingerprint: str, shards: int, progress: Progress,
               outputs: Sequence[Path] = ()) -> dict:
    """`work` over the shards not yet done under `fingerprint`; the stage's totals for the manifest."""
    prepare_stage(run_dir, name, fingerprint, outputs)
    done = run_dir.done_shards(name)
    pending = [s for s in range(shards) if s not in done]
    start = time.perf_counter()
    progress.begin(name, shards, shards - len(pending))
    if pending:
        work(pending, lambda stats: progress.advance(name, stats))
    progress.end(name)
    return totals(run_dir, name, fingerprint, shards, pending, time.perf_counter() - start)


def _span(stats: list[dict]) -> float | None:
    """Seconds from the first shard's start to the last one's end (None without timestamps)."""
    try:
        return (max(datetime.fromisoformat(s["finished"]) for s in stats)
                - min(datetime.fromisoformat(s["started"]) for s in stats)).total_seconds()
    except (KeyError, ValueError):
        return None


def totals(run_dir: RunDir, name: str, fingerprint: str, shards: int, pending: list[int],
           seconds: float | None = None) -> dict:
    """A stage's manifest entry once every shard is done: counts, reasons, and this run's time
    (`seconds`, or the span of the shards done this run when stages overlapped)."""
    all_stats = [run_dir.read_stats(name, s) for s in range(shards)]
    if seconds is None:
        seconds = (_span([all_stats[s] for s in pending]) or 0.0) if pending else 0.0
    counts = {"rows_in": 0, C.KEPT: 0, C.DROPPED: 0, C.FAILED: 0}
    reasons: dict[str, int] = {}
    for stats in all_stats:
        for k in counts:
            counts[k] += stats.get(k, 0)
        for r, n in stats.get("reasons", {}).items():
            reasons[r] = reasons.get(r, 0) + n
    rows_this_run = sum(all_stats[s]["rows_in"] for s in pending)
    return {
        "status": "done",
        "fingerprint": fingerprint,
        "shards_total": shards,
        "shards_done": shards,
        "shards_this_run": len(pending),
        **counts,
        "reasons": dict(sorted(reasons.items())),
        "seconds_this_run": round(seconds, 3),
        "rows_per_s_this_run": round(rows_this_run / seconds, 2) if pending and seconds > 0 else None,
        "shard_seconds": round(sum(stats.get("seconds", 0) for stats in all_stats), 3),
    }


class _Watcher(threading.Thread):
    """While a segment streams: reports each stage's shards as their stats files appear, and each
    stage's manifest entry once all its shards are done (the files are the truth, on any node)."""

    def __init__(self, run_dir: RunDir, segment: Sequence[Stage], fingerprints: Sequence[str], shards: int,
                 pending: dict[str, list[int]], progress: Progress, on_stage_done: Callable[[str, dict], None],
                 interval_s: float = 0.5):
        super().__init__(daemon=True)
        self.run_dir, self.segment, self.fingerprints, self.shards = run_dir, segment, fingerprints, shards
        self.pending, self.progress, self.on_stage_done = pending, progress, on_stage_done
        self.waiting = {name: set(todo) for name, todo in pending.items()}
        self.interval_s, self.halt, self.error = interval_s, threading.Event(), None

    def poll(self) -> None:
        for stage, fingerprint in zip(self.segment, self.fingerprints):
            waiting = self.waiting.get(stage.name)
            if waiting is None:
                continue  # reported
            if waiting:
                try:
                    done = self.run_dir.done_shards(stage.name)
                except Exception as err:  # a store's listing failed past its retries: the next poll asks again
                    log.warning("listing %s failed (%s); retrying", self.run_dir.stage_dir(stage.name), err)
                    continue
                for shard in sorted(waiting & done):
                    waiting.discard(shard)
                    self.progress.advance(stage.name, self.run_dir.read_stats(stage.name, shard))
            if not waiting:
                del self.waiting[stage.name]
                self.on_stage_done(stage.name, totals(self.run_dir, stage.name, fingerprint, self.shards,
                                                      self.pending[stage.name]))

    def run(self) -> None:
        try:
            while not self.halt.wait(self.interval_s):
                self.poll()
        except Exception as err:  # reported by `finish`, on the driver's thread
            self.error = err

    def finish(self) -> None:
        self.halt.set()
        self.join()
        if self.error:
            raise self.error
        self.poll()


def _raise_failures(steps: Sequence[Stage], failures: list[ShardFailure]) -> None:
    """Raise what stopped the first failed shard, once every healthy shard is through
    (`steps`: the stages of the stream, in the order its failures count them)."""
    for f in failures:
        log.warning("stage %s failed on shard %d: %s", steps[f.step].name, f.shard, f.error)
        log.debug("%s", f.trace)
    first = failures[0]
    if isinstance(first.error, MmcurateError):
        raise first.error
    raise RuntimeError(
        f"stage {steps[first.step].name!r} failed on shard {first.shard} ({type(first.error).__name__}: "
        f"{first.error}); {len(failures)} shard(s) failed, every other shard is done: run again to retry them"
    ) from first.error


def run_segment(run_dir: RunDir, ray: RaySession, segment: Sequence[Stage], upstream: Sequence[Stage],
                fingerprints: Sequence[str], shards: int, progress: Progress,
                on_stage_done: Callable[[str, dict], None] = lambda name, entry: None,
                gpu_actor_cpus: int = 4, rows_per_partition: int = 1_000_000) -> None:
    """The stages of one segment over every shard, resuming what is done; each stage's manifest
    entry goes to `on_stage_done` as soon as that stage is done. A barrier decides as a dataflow
    of worker tasks (`GlobalStage.decide_shards`; the driver holds references); per-shard stages
    stream, each with its share of the cluster (`plan.split`)."""
    root, upstream = str(run_dir.root), list(upstream)
    if is_barrier(segment[0]):
        stage = segment[0]

        def work(pending: list[int], on_done: Callable[[dict], None]) -> None:
            io = GlobalShards(root, stage, upstream, shards, pending, alive_count(run_dir, upstream, shards),
                              rows_per_partition)
            for stats in ray.run_remote(decide_on_worker, stage, io, ray.tasks()):
                on_done(stats)
        on_stage_done(stage.name, run_shards(run_dir, stage.name, work, fingerprints[0], shards, progress))
        return
    pending = {}
    for stage, fingerprint in zip(segment, fingerprints):
        prepare_stage(run_dir, stage.name, fingerprint)
        done = run_dir.done_shards(stage.name)
        pending[stage.name] = [s for s in range(shards) if s not in done]
        progress.begin(stage.name, shards, shards - len(pending[stage.name]))
    todo = sorted(set().union(*pending.values()))
    watcher = _Watcher(run_dir, segment, fingerprints, shards, pending, progress, on_stage_done)
    failures = []
    if todo:
        # only the stages with shards to do run (and load models); the rest are read from disk
        running = [(i, stage) for i, stage in enumerate(segment) if pending[stage.name]]
        cluster = ray.cluster()
        shares = split([stage.resources(cluster) for _, stage in running], cluster, gpu_actor_cpus)
        steps = [(ShardTask(root, stage, upstream + list(segment[:i])), share)
                 for (i, stage), share in zip(running, shares)]
        for (_, stage), share in zip(running, shares):
            log.debug("stage %s runs with %s", stage.name, share)
        watcher.poll()  # stages with nothing to do are done now
        watcher.start()
        try:
            failures = ray.stream(steps, todo)
        finally:
            watcher.finish()
    else:
        watcher.poll()
    for stage in segment:
        progress.end(stage.name)
    if failures:
        _raise_failures([stage for _, stage in running], failures)
