"""A run: ingest, every stage shard by shard (resuming what is done), ledger, exports, report."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mmcurate import ingest
from mmcurate.algos.parallel import runner
from mmcurate.engine import atomic
from mmcurate.engine.executor import RaySession
from mmcurate.engine.plan import segments
from mmcurate.engine.rundir import INGEST, RunDir, RunLock
from mmcurate.engine.runner import NoProgress, Progress, prepare_stage, run_segment, run_shards
from mmcurate.jobs import document_export
from mmcurate.jobs import manifest as M
from mmcurate.jobs.documents import build_documents, documents_rules, step_fingerprint
from mmcurate.jobs.export import FORMATS as EXPORT_FORMATS
from mmcurate.jobs.export import ExportTask, export_hf, kept_samples, write_empty
from mmcurate.jobs.ingest import FINGERPRINT_VERSION, fingerprint_input, ingest_input
from mmcurate.jobs.instructions import export_llava, finish
from mmcurate.jobs.ledger import build_ledger
from mmcurate.jobs.report import write_report
from mmcurate.jobs.retry import Retry, redo_incomplete
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config
from mmcurate.schemas.errors import ConfigError, InputError, TeacherError
from mmcurate.stages import PLANNED_SECTIONS, build_stages
from mmcurate.stages.base import Resources, Stage

log = logging.getLogger(__name__)
__all__ = ["Job", "NoProgress", "Progress", "RunResult", "run"]


@dataclass
class RunResult:
    run_dir: Path
    ledger: dict[str, int]
    report: Path
    stages: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the person who ran it should know
    documents: dict[str, int] | None = None  # an interleaved input's documents: in, kept, dropped, failed


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
        retry_failed: bool = False,
    ):
        self.config = config
        self.retry_failed = retry_failed
        self.retry: Retry | None = None
        self.run_dir = RunDir.at(run_dir)
        self.address = address
        self.force = force
        self.progress = progress or NoProgress()
        self.stages: list[Stage] = build_stages(config)
        self.ray = RaySession(address)
        self.lock = RunLock(self.run_dir)

    def _made_exports(self) -> list[str]:
        """The formats of export.formats the run writes itself under shards/ (llava is synthesis's)."""
        made = (*EXPORT_FORMATS, *document_export.INPUT_FORMATS) if self.config.input.documents else EXPORT_FORMATS
        return [f for f in self.config.export.formats if f in made]

    def _stage_order(self) -> list[str]:
        return [INGEST] + [s.name for s in self.stages] + [f"export-{f}" for f in self._made_exports()]

    # ------------------------------------------------------------------ steps
    def _ingest(self, manifest: dict) -> dict:
        files = ingest.resolve_inputs(self.config.input)  # its files: lists, tars, or a folder's images
        done_file = self.run_dir.ingest_done()
        done = json.loads(done_file.read_text()) if done_file.exists() else None
        fp, records = fingerprint_input(files, done, self.ray.tasks)
        key = {"input_fingerprint": fp, "input": self.config.input.ingest_key()}
        if done is not None:
            if {k: done.get(k) for k in key} == key:
                if records is not None and records != done.get("input_files"):  # touched, same bytes
                    atomic.write_json(done_file, {**done, "input_files": records})
                self.progress.begin(INGEST, done["shards"], done["shards"])
                self.progress.end(INGEST)
                return done
            if not self.force and not self.run_dir.made_nothing():  # no work yet: the new input is simply the input
                raise InputError(
                    f"input.path: the input changed since this run directory was made "
                    f"(fingerprint {done.get('input_fingerprint', '?')[:12]} -> {fp[:12]}); use a new --run-dir or --force"
                )
            log.warning("input changed: redoing the whole run")
            for path in (self.run_dir.stages, self.run_dir.shards, self.run_dir.report, self.run_dir.instructions):
                atomic.remove(path)
            atomic.remove(self.run_dir.ledger)
            atomic.remove(self.run_dir.ledger_index)
            atomic.remove(self.run_dir.retry_marker)
            manifest["stages"] = {}
            if records is None:  # an old run dir redone: records from now on
                fp, records = fingerprint_input(files, None, self.ray.tasks)
                key["input_fingerprint"] = fp
        start = time.perf_counter()
        self.progress.begin(INGEST, 0, 0)
        counts = ingest_input(self.run_dir, self.config.input, files, self.config.engine.rows_per_partition,
                              self.ray.tasks, lambda stats: self.progress.advance(INGEST, stats))
        done = {
            **key,
            "fingerprint_version": FINGERPRINT_VERSION,
            "input_files": records,
            "files": [str(p) for p in files],
            **counts,
            "seconds": round(time.perf_counter() - start, 3),
        }
        atomic.write_json(done_file, done)
        self.progress.end(INGEST)
        return done

    def _one_piece(self, name: str, fingerprint: str, make: Callable[[], int], outputs: list[Path]) -> int:
        """A step made in one piece (the hf dataset), redone only when its fingerprint changes."""
        prepare_stage(self.run_dir, name, fingerprint, outputs)
        marker = self.run_dir.stage_marker(name)
        if not marker.exists():
            self.progress.begin(name, 1, 0)
            start = time.perf_counter()
            rows = make()
            stats = {"stage": name, "shard": 0, "rows_in": rows, C.KEPT: rows, "seconds": round(time.perf_counter() - start, 3)}
            atomic.write_json(marker, stats)
            self.progress.advance(name, stats)
            self.progress.end(name)
        return json.loads(marker.read_text())[C.KEPT]

    def _export(self, fmt: str, chain: str, shards: int) -> dict:
        """One export format under shards/<fmt>/, resumable like a stage."""
        out = self.run_dir.export_dir(fmt)
        if self.config.input.documents and fmt in document_export.FORMATS:
            return self._document_export(fmt, out)
        if fmt == "hf":
            rows = self._one_piece("export-hf", f"{chain}:hf", lambda: export_hf(self.run_dir, self.stages, out), [out])
            return {"status": "done", "rows": rows, "path": str(out)}
        task = ExportTask(str(self.run_dir.root), list(self.stages), fmt)
        info = run_shards(self.run_dir, f"export-{fmt}", self._on_workers(task), f"{chain}:{fmt}", shards, self.progress,
                          [out])
        if not info[C.KEPT]:  # nothing kept: one empty file, so that readers find an empty dataset
            write_empty(self.run_dir, self.stages, fmt, out)
        return {"status": "done", "rows": info[C.KEPT], "path": str(out)}

    def _on_workers(self, task) -> Callable[[list[int], Callable[[dict], None]], None]:
        """The work of a task over pending shards (or files of documents): a CPU each, on the cluster."""
        def work(pending: list[int], on_done: Callable[[dict], None]) -> None:
            self.ray.map_shards(task, pending, Resources(num_cpus=1), on_done)

        return work

    def _document_export(self, fmt: str, out: Path) -> dict:
        """A documents run's mmc4, obelics or webdataset export: one record per kept document, as
        `mmcurate export --format <fmt>` writes it, made in one piece (documents.parquet decides
        across shards); redone whole when documents.parquet is (its fingerprint is the documents step's)."""
        def make() -> int:
            atomic.remove(out)  # made again whole: no file of an earlier making stays
            if not self.run_dir.remote:
                out.mkdir(parents=True, exist_ok=True)
            return document_export.export_documents(
                self.run_dir, self.stages, lambda shard, where: kept_samples(self.run_dir, shard, self.stages, where),
                fmt, out)

        fingerprint = f"{self.documents_fingerprint}:{fmt}"
        rows = self._one_piece(f"export-{fmt}", fingerprint, make, [out])
        return {"status": "done", "rows": rows, "path": str(out)}

    def _instructions(self, rows: int) -> dict:
        """Run-level checks of the teacher's records, instructions/*.parquet, llava.json, summary."""
        self.progress.begin("instructions", 1, 0)
        # the across-run duplicate check sees every record: a worker's job, not the driver's
        tasks = runner(self.ray.tasks, self.run_dir.shard_count())
        summary = self.ray.run_remote(finish, self.run_dir, self.stages, tasks, rows,
                                      self.config.engine.rows_per_partition)
        summary["llava_records"] = export_llava(self.run_dir, self.stages, self.run_dir.instructions)
        self.progress.advance("instructions", {"stage": "instructions", "shard": 0, "rows_in": summary["records"],
                                               C.KEPT: summary["llava_records"]})
        self.progress.end("instructions")
        return summary

    def _exports(self, manifest: dict, chain: str, shards: int) -> dict:
        exports = {}
        for fmt in self.config.export.formats:
            if fmt == "llava":
                exports[fmt] = ({"status": "done", "rows": manifest["instructions"]["llava_records"],
                                 "path": str(self.run_dir.llava)}
                                if self.config.synthesis.enabled else
                                {"status": "unavailable", "note": "synthesis.enabled is false"})
            elif fmt not in self._made_exports():
                exports[fmt] = {"status": "unavailable", "note": "format not in this version"}
            else:
                exports[fmt] = self._export(fmt, chain, shards)
        return exports

    def _retry(self, manifest: dict, fingerprints: list[str]) -> None:
        """--retry-failed (or one a crash left unfinished): the transient download failures fetched
        again, before the stages resume; the stages then redo what it changed."""
        fingerprint = next((fp for s, fp in zip(self.stages, fingerprints) if s.name == "download"), "")
        self.retry = Retry.pending(self.run_dir, self.stages, fingerprint)
        if self.retry is not None:
            log.info("finishing the retry an earlier run began%s", "; run again to retry anew" if self.retry_failed else "")
        elif self.retry_failed:
            self.retry = Retry.begin(self.run_dir, self.stages, fingerprint)
        if self.retry is None:
            return
        self.progress.begin("retry", len(self.retry.state["candidates"]), 0)
        self.retry.fetch(self.ray)
        self.progress.end("retry")
        summary = self.retry.summary()
        log.info("retried %d rows in %d shards: %d came back", summary["rows_retried"],
                 len(self.retry.state["candidates"]), summary["recovered"])
        manifest.setdefault("retries", [])
        if not manifest["retries"] or manifest["retries"][-1].get("id") != self.retry.state["id"]:
            manifest["retries"].append({"id": self.retry.state["id"], "started": M.now()})
        manifest["retries"][-1].update(summary)
        M.save(self.run_dir, manifest)

    def _stages(self, manifest: dict, fingerprints: list[str], shards: int) -> None:
        """Every stage, segment by segment: per-shard stages stream, global ones are barriers."""
        def done(name: str, entry: dict) -> None:
            manifest["stages"][name] = entry
            M.save(self.run_dir, manifest)
            self.lock.check()

        n = 0
        for segment in segments(self.stages, self.config.engine.streaming):
            for stage in segment:
                manifest["stages"][stage.name] = {"status": "running"}
            M.save(self.run_dir, manifest)
            self.lock.check()
            if self.retry is not None:  # what the retry changed is made again
                self.retry.before(segment)
            run_segment(self.run_dir, self.ray, segment, self.stages[:n], fingerprints[n:n + len(segment)], shards,
                        self.progress, done, self.config.engine.gpu_actor_cpus,
                        self.config.engine.rows_per_partition)
            if self.retry is not None:
                self.retry.after(segment)
            n += len(segment)

    def _teacher_failures(self, summary: dict, result: RunResult) -> None:
        """Failed teacher requests, said at the end; above `synthesis.max_failed_fraction` of all
        of them, the run (complete otherwise, and resumable) exits 1."""
        failed, records = summary["by_status"].get("failed", 0), summary["records"]
        if not failed:
            return
        why = ", ".join(f"{n} {r}" for r, n in summary["failed_by_reason"].items())
        text = (f"synthesis: {failed:,} of {records:,} teacher requests failed ({why}); run the same command "
                f"again to ask only those again (answers already given come from the cache)")
        limit = self.config.synthesis.max_failed_fraction
        if failed > limit * records:
            raise TeacherError(f"{text}. That is more than synthesis.max_failed_fraction ({limit:g}): "
                               f"is the teacher at {self.config.synthesis.endpoint} up? Everything else is written: "
                               f"report {result.report}")
        result.notes.append(text)

    def run(self) -> RunResult:
        """Run (or resume) the pipeline; raises on anything that leaves the run incomplete."""
        if self.retry_failed and self.config.input.pool:  # before the run dir is touched
            raise ConfigError(f"--retry-failed: input.format {self.config.input.kind} reads a pool already "
                              "downloaded; nothing was downloaded to try again")
        if self.address:  # a cluster that is not there exits 2 before the run dir is touched
            self.ray.ensure()
        self.run_dir.make()
        with self.lock:
            manifest = M.open_manifest(self.run_dir, self.config, self.force, self._stage_order(), self.address)
            stale = atomic.remove_stale_temps(self.run_dir.root)
            if stale:
                log.info("removed %d temp files a killed run left behind", stale)
            M.save(self.run_dir, manifest)
            try:
                done = self._ingest(manifest)  # checks the input (cheap) before models are fetched
                for stage in self.stages:  # what this many rows would cost, before anything runs
                    stage.check_scale(done["rows"])
                for stage in self.stages:  # find models and check them before any image moves
                    model = stage.prepare()
                    if model:
                        manifest["models"][stage.name] = model
                if self.config.input.documents:  # the paragraph rules' models, the assignment's CLIP
                    self.documents = documents_rules(self.config, self.stages)
                manifest["input"] = {k: done[k] for k in ("files", "input_fingerprint", "rows", "shards")}
                manifest["stages"][INGEST] = {
                    "status": "done",
                    "shards_total": done["shards"],
                    "rows_in": done["rows"],
                    C.KEPT: done["rows"] - done[C.FAILED],
                    C.FAILED: done[C.FAILED],
                }
                M.save(self.run_dir, manifest)
                shards = done["shards"]
                chain = done["input_fingerprint"][:16]
                fingerprints = []
                for stage in self.stages:
                    chain = stage.fingerprint(chain)
                    fingerprints.append(chain)
                self._retry(manifest, fingerprints)
                for name, failures in redo_incomplete(self.run_dir, self.stages, self._made_exports()).items():
                    log.warning("%s: asking again the %d teacher requests that failed in an earlier run", name, failures)
                self._stages(manifest, fingerprints, shards)
                for section in PLANNED_SECTIONS:
                    manifest["stages"].setdefault(section, {"status": "unavailable", "note": "stage not in this version"})
                ledger = build_ledger(self.run_dir, self.stages, self.config.engine.ledger_part_rows, self.ray.tasks)
                manifest["ledger"] = ledger
                if self.config.input.documents:  # documents.parquet, beside the ledger it is decided from
                    rules, weights = self.documents
                    self.documents_fingerprint = step_fingerprint(chain, self.config, rules, weights)
                    manifest["documents"] = build_documents(self.run_dir, self.config, done["documents"], self._on_workers,
                                                            self.progress, self.documents_fingerprint, rules, weights,
                                                            self.ray.tasks)
                if self.config.synthesis.enabled:
                    manifest["instructions"] = self._instructions(done["rows"])
                if self.retry is not None:
                    self.retry.before_exports(self.config.export.formats)
                manifest["exports"] = self._exports(manifest, chain, shards)
                if self.retry is not None:
                    self.retry.finish()
                manifest["status"] = "finished"
                manifest["runs"][-1]["finished"] = M.now()
                M.save(self.run_dir, manifest)
                report = write_report(self.run_dir)
                result = RunResult(self.run_dir.root, ledger, report, manifest["stages"], documents=manifest.get("documents"))
                if not ledger[C.KEPT]:
                    result.notes.append("the input has no rows: the exports are empty datasets" if not ledger["rows"] else
                                        "no sample was kept: the exports are empty datasets (the ledger says why)")
                if self.config.synthesis.enabled:
                    self._teacher_failures(manifest["instructions"], result)
                return result
            except BaseException:
                manifest["status"] = "interrupted"
                M.save(self.run_dir, manifest)
                raise
            finally:
                self.ray.close()


def run(config: Config, run_dir: str | Path, **kwargs) -> RunResult:
    """Run or resume `config` in `run_dir`."""
    return Job(config, run_dir, **kwargs).run()
