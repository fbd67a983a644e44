"""`mmcurate run --retry-failed`: the rows whose download failed for a transient reason tried again,
then exactly the work downstream of the shards that changed redone.

The download stage's shards with a transient failure are tried again where they lie: only those
rows are fetched, and the shard is rewritten with their new outcomes (`download_attempts` counts
the tries; a row that comes back is stored exactly as a first-time success). A shard that gained
a kept row is *stale*: each per-shard stage after download forgets its stale shards (the normal
resume redoes them). A global stage (dedup, a percentile) depends on every shard: it decides
again over all of them, and the shards whose decision came out different join the stale set for
the stages after it. Exports forget the stale shards too; the ledger and report are rebuilt by
every run anyway. What the retry changed, and how far it has been carried, is kept in
`retry.json` until the run is through: a crash at any point resumes the same way.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from mmcurate.engine import atomic
from mmcurate.engine.plan import is_barrier
from mmcurate.engine.rundir import INGEST, RunDir
from mmcurate.engine.shards import shard_stats
from mmcurate.schemas import columns as C
from mmcurate.stages.base import Stage, assemble
from mmcurate.stages.download import DownloadStage, outcome_scores
from mmcurate.storage import paths


def transient(reason: str | None, reasons: Sequence[str]) -> bool:
    """Whether `reason` is one `download.retry_reasons` names (`http_5xx`: any 5xx status)."""
    if reason is None:
        return False
    return reason in reasons or ("http_5xx" in reasons and re.fullmatch(r"http_5\d\d", reason) is not None)


@dataclass
class RetryTask:
    """A picklable shard task: one download shard's transient failures fetched again."""

    root: str
    stage: DownloadStage
    retry_id: str

    def setup(self) -> None:
        self.stage.setup()

    def __call__(self, shard: int) -> dict:
        run_dir = RunDir.at(self.root)
        if not run_dir.is_done(self.stage.name, shard):  # redone from scratch since: nothing to retry
            return {"stage": self.stage.name, "shard": shard}
        stats = run_dir.read_stats(self.stage.name, shard)
        if stats.get("retry") == self.retry_id:  # done before a crash
            return stats
        started = time.time()
        out = run_dir.read_shard(self.stage.name, shard)
        if C.DOWNLOAD_ATTEMPTS not in out.column_names:  # written before attempts were counted: one each
            out = out.append_column(C.DOWNLOAD_ATTEMPTS, pa.array([1] * out.num_rows, pa.int16()))
        for field in self.stage.output_schema:  # written before download handed on features: none
            if field.name not in out.column_names:
                out = out.append_column(field, pa.nulls(out.num_rows, field.type))
        reasons = self.stage.config.download.retry_reasons
        todo = [i for i, (s, r) in enumerate(zip(out[C.STATUS].to_pylist(), out[C.REASON].to_pylist()))
                if s == C.FAILED and transient(r, reasons)]
        ingest = run_dir.read_shard(INGEST, shard, columns=[C.UID, C.ROW, C.URL, C.CAPTION])
        rows = ingest.take(_positions(ingest[C.ROW].to_pylist(), out[C.ROW].to_pylist(), todo))
        outcomes = self.stage.fetch([url.strip() for url in rows[C.URL].to_pylist()])
        verdicts = outcome_scores(outcomes, self.stage.config.download.encode_format)
        attempts = out[C.DOWNLOAD_ATTEMPTS].to_pylist()
        verdicts.scores[C.DOWNLOAD_ATTEMPTS] = [(attempts[i] or 1) + 1 for i in todo]
        again = assemble(self.stage, rows, verdicts).cast(self.stage.output_schema)
        take = list(range(out.num_rows))
        for j, i in enumerate(todo):
            take[i] = out.num_rows + j
        table = pa.concat_tables([out.cast(self.stage.output_schema), again]).take(take)
        atomic.write_parquet(run_dir.shard_file(self.stage.name, shard), table)
        stats = {**shard_stats(self.stage.name, shard, table, time.time() - started, started),
                 "retry": self.retry_id, "retried": len(todo),
                 "recovered": sum(o.reason is None for o in outcomes)}
        atomic.write_json(run_dir.stats_file(self.stage.name, shard), stats)
        return stats


def _positions(ingest_rows: list[int], rows: list[int], todo: list[int]) -> list[int]:
    at = {r: k for k, r in enumerate(ingest_rows)}
    return [at[rows[i]] for i in todo]


def _digest(run_dir: RunDir, stage: str, shard: int) -> str:
    with run_dir.shard_file(stage, shard).open("rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Retry:
    """A retry carried through a run; its state is `retry.json` (see the module doc)."""

    def __init__(self, run_dir: RunDir, stages: Sequence[Stage], state: dict):
        self.run_dir, self.stages, self.state = run_dir, list(stages), state

    @classmethod
    def pending(cls, run_dir: RunDir, stages: Sequence[Stage], fingerprint: str) -> Retry | None:
        """The retry an earlier run left unfinished, if any, and if the download stage it retried is
        still the one this run has (`fingerprint`); otherwise everything is redone anyway."""
        if not run_dir.retry_marker.exists():
            return None
        state = json.loads(paths.read_text(run_dir.retry_marker))
        if state.get("fingerprint") != fingerprint:
            atomic.remove(run_dir.retry_marker)
            return None
        return cls(run_dir, stages, state)

    @classmethod
    def begin(cls, run_dir: RunDir, stages: Sequence[Stage], fingerprint: str) -> Retry:
        """A new retry of the download failures this run dir holds, recorded before anything changes."""
        download = next(s for s in stages if isinstance(s, DownloadStage))  # a pool's run is refused before
        reasons = download.config.download.retry_reasons
        done = sorted(run_dir.done_shards(download.name))
        before = {s: run_dir.read_stats(download.name, s) for s in done}
        candidates = [s for s in done if any(transient(r, reasons) for r in before[s].get("reasons", {}))]
        state = {"id": f"{time.time():.6f}", "fingerprint": fingerprint, "reasons": list(reasons), "candidates": candidates,
                 "kept_before": {str(s): before[s][C.KEPT] for s in candidates},
                 "rows": sum(n for s in candidates for r, n in before[s]["reasons"].items() if transient(r, reasons)),
                 "fetched": False, "stale": [], "applied": [download.name], "digests": {}}
        retry = cls(run_dir, stages, state)
        retry.save()
        return retry

    def save(self) -> None:
        atomic.write_json(self.run_dir.retry_marker, self.state)

    def fetch(self, ray) -> None:
        """Every candidate shard's transient failures fetched again (on the cluster, a task a shard)."""
        download = next(s for s in self.stages if isinstance(s, DownloadStage))
        if not self.state["fetched"]:
            task = RetryTask(str(self.run_dir.root), download, self.state["id"])
            ray.map_shards(task, self.state["candidates"], download.resources(ray.cluster()), lambda stats: None)
            stale = [s for s in self.state["candidates"] if self.run_dir.is_done(download.name, s)
                     and self.run_dir.read_stats(download.name, s)[C.KEPT] != self.state["kept_before"][str(s)]]
            self.state.update(fetched=True, stale=sorted(set(self.state["stale"]) | set(stale)))
            self.save()

    def summary(self) -> dict:
        download = next(s for s in self.stages if isinstance(s, DownloadStage))
        done = self.run_dir.done_shards(download.name)
        stats = [self.run_dir.read_stats(download.name, s) for s in self.state["candidates"] if s in done]
        return {"rows_retried": sum(s.get("retried", 0) for s in stats),
                "recovered": sum(s.get("recovered", 0) for s in stats),
                "shards_changed": len(self.state["stale"]), "reasons": self.state["reasons"]}

    def before(self, segment: Sequence[Stage]) -> None:
        """Forget what `segment`'s stages made from shards the retry changed (once per stage)."""
        for stage in segment:
            if stage.name in self.state["applied"]:
                continue
            if not self.state["stale"]:  # nothing changed above it: nothing to redo
                pass
            elif is_barrier(stage):  # it decides again over every shard; what it changes is stale after it
                if stage.name not in self.state["digests"]:  # recorded before anything is forgotten
                    done = sorted(self.run_dir.done_shards(stage.name))
                    self.state["digests"][stage.name] = {str(s): _digest(self.run_dir, stage.name, s) for s in done}
                    self.save()
                self._forget(stage.name, [int(s) for s in self.state["digests"][stage.name]])
            else:
                self._forget(stage.name, self.state["stale"])
            self.state["applied"].append(stage.name)
            self.save()

    def after(self, segment: Sequence[Stage]) -> None:
        """Once a global stage has decided again: the shards whose decision changed become stale."""
        for stage in segment:
            old = self.state["digests"].get(stage.name)
            if old is None:
                continue
            changed = {int(s) for s, d in old.items() if _digest(self.run_dir, stage.name, int(s)) != d}
            self.state["stale"] = sorted(set(self.state["stale"]) | changed)
            self.save()

    def before_exports(self, formats: Sequence[str]) -> None:
        """Exports made from stale shards are made again (one-piece exports whole)."""
        for fmt in formats:
            name = f"export-{fmt}"
            if name in self.state["applied"]:
                continue
            if self.state["stale"]:
                forget_exports(self.run_dir, [fmt], self.state["stale"])
            self.state["applied"].append(name)
            self.save()

    def _forget(self, stage: str, shards: Sequence[int]) -> None:
        forget(self.run_dir, stage, shards)

    def finish(self) -> None:
        atomic.remove(self.run_dir.retry_marker)



def forget(run_dir: RunDir, stage: str, shards: Sequence[int]) -> None:
    """`stage`'s `shards` are no longer done: the next pass over the stage makes them again."""
    for shard in shards:
        atomic.remove(run_dir.stats_file(stage, shard))  # first: the shard is no longer done


def forget_exports(run_dir: RunDir, formats: Sequence[str], shards: Sequence[int]) -> None:
    """The exports of `shards` made again (a one-piece export whole)."""
    for fmt in formats:
        name = f"export-{fmt}"
        atomic.remove(run_dir.stage_marker(name))
        forget(run_dir, name, shards)
        for shard in shards:  # a shard left with no sample writes no file: none may stay
            for ext in ("tar", "parquet"):
                atomic.remove(run_dir.export_dir(fmt) / f"{shard:06d}.{ext}")


def redo_incomplete(run_dir: RunDir, stages: Sequence[Stage], formats: Sequence[str]) -> dict[str, int]:
    """The shards an earlier run left `incomplete` (teacher requests that failed: they are never
    cached) made again by this run, with what depends on them; the answers they have come from the
    cache, so only the failures are asked again. Returns {stage: failures to try again}."""
    again: dict[str, int] = {}
    for i, stage in enumerate(stages):
        if not stage.may_be_incomplete:
            continue
        found = {s: run_dir.read_stats(stage.name, s).get("incomplete", 0) for s in sorted(run_dir.done_shards(stage.name))}
        shards = [s for s, n in found.items() if n]
        if not shards:
            continue
        again[stage.name] = sum(found.values())
        forget_exports(run_dir, formats, shards)  # from the last step back: a crash between leaves the rest to redo
        for later in reversed(stages[i + 1:]):
            forget(run_dir, later.name, sorted(run_dir.done_shards(later.name)) if is_barrier(later) else shards)
        forget(run_dir, stage.name, shards)
    return again
