"""A run: ingest, every stage shard by shard (resuming what is done), ledger, exports, report."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Protocol

from mmcurate import __version__, atomic
from mmcurate.errors import ConfigError, InputError
from mmcurate.jobs.export import FORMATS as EXPORT_FORMATS
from mmcurate.jobs.export import ExportTask
from mmcurate.jobs.ledger import build_ledger
from mmcurate.jobs.report import write_report
from mmcurate.jobs.rundir import INGEST, RunDir, RunLock
from mmcurate.pipelines import PLANNED_SECTIONS, build_stages, ingest
from mmcurate.pipelines.stage import Cluster, GlobalStage, Resources, Stage
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config

log = logging.getLogger(__name__)
PACKAGES = ("mmcurate", "ray", "pyarrow", "polars", "img2dataset", "pillow", "opencv-python-headless", "torch", "open_clip_torch")


ResourcesFor = Callable[[Cluster], Resources]  # a stage's needs, decided once Ray says what is there


class Progress(Protocol):
    """Receives progress events; the command line draws them, nothing below it prints."""

    def begin(self, stage: str, total: int, done: int) -> None: ...
    def advance(self, stage: str, stats: dict) -> None: ...
    def end(self, stage: str) -> None: ...


class NoProgress:
    def begin(self, stage: str, total: int, done: int) -> None: ...
    def advance(self, stage: str, stats: dict) -> None: ...
    def end(self, stage: str) -> None: ...


@dataclass
class RunResult:
    run_dir: Path
    ledger: dict[str, int]
    report: Path
    stages: dict[str, dict] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _flatten(data: object, prefix: str = "") -> dict[str, object]:
    if isinstance(data, dict):
        out: dict[str, object] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _changed_keys(old: dict, new: dict) -> list[str]:
    """Keys whose value differs. A key the old config lacks and the new one holds at its default was
    added to mmcurate after the run dir was made: an upgrade, not a change of the run."""
    a, b = _flatten(old), _flatten(new)
    defaults = _flatten(Config.model_validate({"input": {"path": "-"}}).resolved())
    return sorted(k for k in a.keys() | b.keys()
                  if a.get(k) != b.get(k) and not (k not in a and k in defaults and b[k] == defaults[k]))


class Job:
    """One `mmcurate run` over a run directory."""

    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        *,
        address: str | None = None,
        force: bool = False,
        progress: Progress | None = None,
    ):
        self.config = config
        self.run_dir = RunDir.at(run_dir)
        self.address = address
        self.force = force
        self.progress = progress or NoProgress()
        self.stages: list[Stage] = build_stages(config)
        self._ray_started = False  # whether this job started Ray (and so stops it)
        self._ray_ready = False

    # ------------------------------------------------------------------ manifest
    def _load_or_create_manifest(self) -> dict:
        config = self.config.resolved()
        config_hash = self.config.section_hash()
        if self.run_dir.manifest.exists():
            manifest = self.run_dir.read_manifest()
            if manifest.get("config_hash") != config_hash:
                changed = _changed_keys(manifest.get("config", {}), config)
                shown = ", ".join(changed[:8]) + (" ..." if len(changed) > 8 else "")
                if not changed:
                    log.info("this run dir predates config keys now at their defaults: resuming as it was")
                elif not self.force:
                    raise ConfigError(
                        f"{self.run_dir.root}: this run directory was made with a different config "
                        f"(changed: {shown}); use a new --run-dir, or --force to redo what the change affects"
                    )
                else:
                    log.warning("config changed (%s): stages it affects are redone", shown)
        else:
            manifest = {"created": _now(), "stages": {}, "runs": []}
        manifest.update(
            mmcurate_version=__version__,
            config=config,
            config_hash=config_hash,
            versions=_versions(),
            status="running",
            updated=_now(),
        )
        manifest.setdefault("models", {})
        manifest["stage_order"] = [INGEST] + [s.name for s in self.stages] + [
            f"export-{f}" for f in self.config.export.formats if f in EXPORT_FORMATS
        ]
        manifest["runs"].append({"started": _now(), "address": self.address or "embedded"})
        return manifest

    def _save(self, manifest: dict) -> None:
        manifest["updated"] = _now()
        atomic.write_json(self.run_dir.manifest, manifest)

    # ------------------------------------------------------------------ ray
    def _ensure_ray(self) -> None:
        if not self._ray_ready:
            from mmcurate.pipelines import executor

            self._ray_started = executor.start(self.address)
            self._ray_ready = True

    def _map(self, name: str, task, shards: list[int], resources: ResourcesFor, total: int) -> None:
        from mmcurate.pipelines import executor

        self.progress.begin(name, total, total - len(shards))
        if shards and isinstance(task, GlobalTask):
            for stats in task.run(shards):
                self.progress.advance(name, stats)
        elif shards:
            self._ensure_ray()
            need = resources(executor.cluster())
            executor.map_shards(task, shards, need, lambda stats: self.progress.advance(name, stats))
        self.progress.end(name)

    # ------------------------------------------------------------------ steps
    def _ingest(self, manifest: dict) -> dict:
        files = ingest.resolve_inputs(self.config.input.path)
        fp = ingest.fingerprint(files)
        key = {"input_fingerprint": fp, "input": self.config.input.model_dump(exclude={"path"})}
        done_file = self.run_dir.ingest_done()
        if done_file.exists():
            done = json.loads(done_file.read_text())
            if {k: done.get(k) for k in key} == key:
                self.progress.begin(INGEST, done["shards"], done["shards"])
                self.progress.end(INGEST)
                return done
            if not self.force:
                raise InputError(
                    f"input.path: the input changed since this run directory was made "
                    f"(fingerprint {done.get('input_fingerprint', '?')[:12]} -> {fp[:12]}); use a new --run-dir or --force"
                )
            log.warning("input changed: redoing the whole run")
            for sub in ("stages", "shards", "report", "instructions"):
                shutil.rmtree(self.run_dir.root / sub, ignore_errors=True)
            self.run_dir.ledger.unlink(missing_ok=True)
            manifest["stages"] = {}
        start = time.perf_counter()
        self.progress.begin(INGEST, 0, 0)

        def write(shard: int, table) -> None:
            atomic.write_parquet(self.run_dir.shard_file(INGEST, shard), table)
            stats = {"stage": INGEST, "shard": shard, "rows_in": table.num_rows}
            stats[C.FAILED] = table[C.STATUS].to_pylist().count(C.FAILED)
            stats[C.KEPT] = table.num_rows - stats[C.FAILED]
            self.progress.advance(INGEST, stats)

        i = self.config.input
        buffer = ingest.ShardBuffer(i.shard_size, write, i.max_caption_chars, i.max_url_chars)
        for path in files:
            for raw in ingest.read_rows(path, self.config.input):
                buffer.add(raw)
        buffer.flush()
        seconds = time.perf_counter() - start
        done = {
            **key,
            "files": [str(p) for p in files],
            "shards": buffer.shard,
            "rows": buffer.rows,
            C.FAILED: buffer.failed,
            "seconds": round(seconds, 3),
        }
        atomic.write_json(done_file, done)
        self.progress.end(INGEST)
        return done

    def _prepare_stage(self, name: str, fingerprint: str) -> None:
        """Wipe a stage's outputs made under another fingerprint (only reachable with --force)."""
        meta = self.run_dir.stage_meta(name)
        if meta.exists() and json.loads(meta.read_text()).get("fingerprint") != fingerprint:
            log.warning("stage %s: configuration changed, redoing it", name)
            shutil.rmtree(self.run_dir.stage_dir(name))
            if name.startswith("export-"):
                shutil.rmtree(self.run_dir.shards / name.removeprefix("export-"), ignore_errors=True)
        atomic.write_json(meta, {"stage": name, "fingerprint": fingerprint})

    def _run_stage(self, name: str, task, resources: ResourcesFor, fingerprint: str, shards: int) -> dict:
        self._prepare_stage(name, fingerprint)
        pending = [s for s in range(shards) if not self.run_dir.is_done(name, s)]
        start = time.perf_counter()
        self._map(name, task, pending, resources, shards)
        seconds = time.perf_counter() - start
        all_stats = [self.run_dir.read_stats(name, s) for s in range(shards)]
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

    def _export_hf(self, fingerprint: str) -> dict:
        """The `datasets` folder under shards/hf: one piece, redone only when its fingerprint changes."""
        from mmcurate.jobs.export import export_hf

        name = "export-hf"
        self._prepare_stage(name, fingerprint)
        marker = self.run_dir.stage_dir(name) / "done.json"
        if not marker.exists():
            self.progress.begin(name, 1, 0)
            start = time.perf_counter()
            rows = export_hf(self.run_dir, self.stages, self.run_dir.shards / "hf")
            stats = {"stage": name, "shard": 0, "rows_in": rows, C.KEPT: rows, "seconds": round(time.perf_counter() - start, 3)}
            atomic.write_json(marker, stats)
            self.progress.advance(name, stats)
            self.progress.end(name)
        rows = json.loads(marker.read_text())[C.KEPT]
        return {"status": "done", "rows": rows, "path": str(self.run_dir.shards / "hf")}

    def _instructions(self) -> dict:
        """Run-level checks of the teacher's records, instructions/*.parquet, llava.json, summary."""
        from mmcurate.jobs.instructions import export_llava, finish
        from mmcurate.pipelines import executor

        self.progress.begin("instructions", 1, 0)
        self._ensure_ray()  # the across-run duplicate check sees every record: a worker's job, not the driver's
        summary = executor.run_remote(finish, self.run_dir, self.stages)
        summary["llava_records"] = export_llava(self.run_dir, self.stages, self.run_dir.root / "instructions")
        self.progress.advance("instructions", {"stage": "instructions", "shard": 0, "rows_in": summary["records"],
                                               C.KEPT: summary["llava_records"]})
        self.progress.end("instructions")
        return summary

    def run(self) -> RunResult:
        """Run (or resume) the pipeline; raises on anything that leaves the run incomplete."""
        from mmcurate.jobs.shard_task import ShardTask

        self.run_dir.root.mkdir(parents=True, exist_ok=True)
        with RunLock(self.run_dir):
            manifest = self._load_or_create_manifest()
            stale = atomic.remove_stale_temps(self.run_dir.root)
            if stale:
                log.info("removed %d temp files a killed run left behind", stale)
            self._save(manifest)
            try:
                done = self._ingest(manifest)  # checks the input (cheap) before models are fetched
                for stage in self.stages:  # find models and check them before any image moves
                    model = stage.prepare()
                    if model:
                        manifest["models"][stage.name] = model
                manifest["input"] = {k: done[k] for k in ("files", "input_fingerprint", "rows", "shards")}
                manifest["stages"][INGEST] = {
                    "status": "done",
                    "shards_total": done["shards"],
                    "rows_in": done["rows"],
                    C.KEPT: done["rows"] - done[C.FAILED],
                    C.FAILED: done[C.FAILED],
                }
                self._save(manifest)
                shards = done["shards"]
                upstream: list[Stage] = []
                chain = done["input_fingerprint"][:16]
                for stage in self.stages:
                    chain = stage.fingerprint(chain)
                    if isinstance(stage, GlobalStage):
                        task = GlobalTask(self, stage, list(upstream))
                    else:
                        task = ShardTask(str(self.run_dir.root), stage, list(upstream))
                    manifest["stages"][stage.name] = self._run_stage(stage.name, task, stage.resources, chain, shards)
                    self._save(manifest)
                    upstream.append(stage)
                for section in PLANNED_SECTIONS:
                    manifest["stages"].setdefault(section, {"status": "unavailable", "note": "stage not in this version"})
                ledger = build_ledger(self.run_dir, self.stages)
                manifest["ledger"] = ledger
                exports = {}
                if self.config.synthesis.enabled:
                    manifest["instructions"] = self._instructions()
                for fmt in self.config.export.formats:
                    if fmt == "llava":
                        exports[fmt] = ({"status": "done", "rows": manifest["instructions"]["llava_records"],
                                         "path": str(self.run_dir.root / "instructions" / "llava.json")}
                                        if self.config.synthesis.enabled else
                                        {"status": "unavailable", "note": "synthesis.enabled is false"})
                        continue
                    if fmt not in EXPORT_FORMATS:
                        exports[fmt] = {"status": "unavailable", "note": "format not in this version"}
                        continue
                    if fmt == "hf":
                        exports[fmt] = self._export_hf(f"{chain}:hf")
                        continue
                    name = f"export-{fmt}"
                    task = ExportTask(str(self.run_dir.root), list(self.stages), fmt)
                    info = self._run_stage(name, task, lambda cluster: Resources(num_cpus=1), f"{chain}:{fmt}", shards)
                    exports[fmt] = {"status": "done", "rows": info[C.KEPT], "path": str(self.run_dir.shards / fmt)}
                manifest["exports"] = exports
                manifest["status"] = "finished"
                manifest["runs"][-1]["finished"] = _now()
                self._save(manifest)
                report = write_report(self.run_dir)
                return RunResult(self.run_dir.root, ledger, report, manifest["stages"])
            except BaseException:
                manifest["status"] = "interrupted"
                self._save(manifest)
                raise
            finally:
                if self._ray_started:
                    from mmcurate.pipelines import executor

                    executor.stop()


class GlobalTask:
    """A global stage over the whole run, decided in one Ray task on a worker, never on the driver.

    The driver only waits: the rows of every shard are gathered, decided and split back into
    shard files inside that task (`shard_task.decide_global`), so the driver's memory does not
    grow with the input and a cluster can give the task a node with room for it.
    """

    def __init__(self, job: Job, stage: GlobalStage, upstream: list[Stage]):
        self.job, self.stage, self.upstream = job, stage, upstream

    def run(self, pending: list[int]) -> list[dict]:
        from mmcurate.jobs.shard_task import decide_global
        from mmcurate.pipelines import executor

        self.job._ensure_ray()
        return executor.run_remote(decide_global, str(self.job.run_dir.root), self.stage, self.upstream, pending)


def run(config: Config, run_dir: str | Path, **kwargs) -> RunResult:
    """Run or resume `config` in `run_dir`."""
    return Job(config, run_dir, **kwargs).run()

