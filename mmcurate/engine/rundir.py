"""The run directory's layout (DESIGN A.3): the one place that knows where every file lives."""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from mmcurate.engine.lease import Lease
from mmcurate.schemas.errors import ConfigError
from mmcurate.storage import paths

INGEST = "ingest"
# stages whose per-shard caches live outside stages/ (the layout DESIGN A.3 gives them)
_CACHE_DIRS = {"synthesis": "instructions/cache"}


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    root: Path

    @classmethod
    def at(cls, path: str | Path) -> RunDir:
        """The run dir at a local or mounted path, or at `s3://bucket/prefix` (another scheme, or
        credentials in the URI, exit 2 naming --run-dir)."""
        root = paths.as_path(path, "--run-dir")
        return cls(root if paths.is_remote(root) else root.resolve())

    @property
    def remote(self) -> bool:
        return paths.is_remote(self.root)

    def make(self) -> None:
        """Make the folder; on a store, check that its bucket exists (a run never creates buckets)."""
        if not self.remote:
            self.root.mkdir(parents=True, exist_ok=True)
            return
        bucket = self.root.path.split("/", 1)[0]
        try:
            found = self.root.fs.exists(bucket)
        except (OSError, ValueError) as exc:  # no credentials, store unreachable
            raise ConfigError(f"--run-dir {self.root}: the store cannot be reached: {exc}") from None
        if not found:
            raise ConfigError(f"--run-dir {self.root}: bucket {bucket!r} does not exist or is not readable with these credentials")

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def ledger(self) -> Path:
        """One parquet file, or at scale a directory of parts (DESIGN A.3)."""
        return self.root / "ledger.parquet"

    def ledger_part(self, part: int, root: Path | None = None) -> Path:
        return (root or self.ledger) / f"part-{part:06d}.parquet"

    def ledger_files(self) -> list[Path]:
        """The ledger's files in row order: the file itself, or its parts; [] before it exists."""
        if self.ledger.is_dir():
            return sorted(self.ledger.glob("part-*.parquet"))
        return [self.ledger] if self.ledger.exists() else []

    @property
    def ledger_index(self) -> Path:
        """Beside a ledger in parts: each part's (uid, row) sorted by uid, and the parts' aggregates."""
        return self.root / "ledger_index"

    def ledger_index_part(self, part: int, root: Path | None = None) -> Path:
        return (root or self.ledger_index) / f"part-{part:06d}.parquet"

    def ledger_parts(self, root: Path | None = None) -> Path:
        return (root or self.ledger_index) / "parts.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def report_json(self) -> Path:
        return self.report / "report.json"

    @property
    def report_page(self) -> Path:
        return self.report / "index.html"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def instructions(self) -> Path:
        return self.root / "instructions"

    @property
    def llava(self) -> Path:
        return self.instructions / "llava.json"

    @property
    def instructions_summary(self) -> Path:
        return self.instructions / "summary.json"

    def instruction_file(self, shard: int) -> Path:
        """The final instruction records of a shard (after the run-level checks)."""
        return self.instructions / f"{shard:06d}.parquet"

    def synthesis_records(self, shard: int) -> Path:
        """The records the synthesis stage wrote for a shard, before the run-level checks."""
        return self.side_file("synthesis", "records", shard)

    def export_dir(self, fmt: str) -> Path:
        return self.shards / fmt

    @property
    def stages(self) -> Path:
        return self.root / "stages"

    def stage_dir(self, stage: str) -> Path:
        return self.stages / stage

    def shard_file(self, stage: str, shard: int) -> Path:
        return self.stage_dir(stage) / f"{shard:06d}.parquet"

    def stats_file(self, stage: str, shard: int) -> Path:
        """Written after the shard file: it is both the statistics and the resume marker."""
        return self.stage_dir(stage) / f"{shard:06d}.stats.json"

    def side_file(self, stage: str, name: str, shard: int) -> Path:
        """A further table a stage stores beside its shard output (synthesis: its records)."""
        return self.stage_dir(stage) / f"{name}-{shard:06d}.parquet"

    def cache_file(self, stage: str, shard: int) -> Path:
        """A stage's own cache for one shard (synthesis: the teacher's answers by request hash)."""
        return self.root / _CACHE_DIRS.get(stage, f"stages/{stage}/cache") / f"{shard:06d}.jsonl"

    def stage_marker(self, stage: str) -> Path:
        """The done marker of a stage that is one piece, not shards (export-hf)."""
        return self.stage_dir(stage) / "done.json"

    @property
    def retry_marker(self) -> Path:
        """While a --retry-failed is being carried through the stages: what it changed, and how far."""
        return self.root / "retry.json"

    def stage_meta(self, stage: str) -> Path:
        return self.stage_dir(stage) / "_stage.json"

    @property
    def ingest_pieces(self) -> Path:
        """Where ingest's tasks leave the units' chunks until they are cut into shards."""
        return self.stage_dir(INGEST) / "pieces"

    def ingest_piece(self, unit: int, chunk: int) -> Path:
        return self.ingest_pieces / f"{unit:06d}-{chunk:06d}.parquet"

    def ingest_done(self) -> Path:
        return self.stage_dir(INGEST) / "_SUCCESS.json"

    @property
    def documents_table(self) -> Path:
        """Interleaved documents as ingest read them (input.format mmc4, obelics): their ids, URLs,
        texts and image positions, in files whose names sort in document order."""
        return self.stage_dir(INGEST) / "documents"

    def documents_file(self, unit: int, chunk: int) -> Path:
        return self.documents_table / f"{unit:06d}-{chunk:06d}.parquet"

    def documents_files(self) -> list[Path]:
        """The documents table's files in document order; [] for an input of no documents."""
        return [self.documents_table / n for n in sorted(paths.names(self.documents_table)) if n.endswith(".parquet")]

    @property
    def documents_ledger(self) -> Path:
        """Beside the ledger: one row per input document, kept, dropped or failed, with its reason."""
        return self.root / "documents.parquet"

    def is_done(self, stage: str, shard: int) -> bool:
        return self.stats_file(stage, shard).exists()

    def done_shards(self, stage: str) -> set[int]:
        """The shards whose stats file exists, from one listing of the stage's folder (on a store,
        one LIST per thousand shards, not a request per shard)."""
        tail = len(".stats.json")
        return {int(n[:-tail]) for n in paths.names(self.stage_dir(stage)) if n.endswith(".stats.json") and n[:-tail].isdigit()}

    def made_nothing(self) -> bool:
        """Whether no stage (ingest aside) has a shard done: a run that stopped before any work
        (a failed input or model check), whose config may still change at no cost."""
        return not any(self.done_shards(name) or self.stage_marker(name).exists()
                       for name in paths.names(self.stages) if name != INGEST)

    def read_shard(self, stage: str, shard: int, columns: list[str] | None = None) -> pa.Table:
        return paths.read_table(self.shard_file(stage, shard), columns=columns)

    def read_stats(self, stage: str, shard: int) -> dict:
        return json.loads(paths.read_text(self.stats_file(stage, shard)))

    def read_manifest(self) -> dict:
        if not self.manifest.exists():
            what = "does not exist" if not paths.names(self.root) and not self.root.exists() else "has no manifest.json"
            raise ConfigError(f"{self.root}: not a run directory ({what}); give the --run-dir of a `mmcurate run`")
        return json.loads(self.manifest.read_text())

    def shard_count(self) -> int:
        if not self.ingest_done().exists():
            return 0
        return json.loads(self.ingest_done().read_text())["shards"]


class RunLock:
    """An exclusive lock on a run directory, so two runs never write the same files: an flock on a
    local or mounted path, a renewed lease object on a store (`engine/lease.py`)."""

    def __init__(self, run_dir: RunDir):
        self.path = run_dir.root / ".lock"
        self._fd: int | None = None
        self._lease = Lease(self.path) if run_dir.remote else None

    def __enter__(self) -> RunLock:
        if self._lease is not None:
            self._lease.take()
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"{self.path.parent}: run directory is in use by pid {holder}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def check(self) -> None:
        """Raise if the lock was lost (a lease on a store taken by another run: never locally)."""
        if self._lease is not None:
            self._lease.check()

    def __exit__(self, *exc) -> None:
        if self._lease is not None:
            self._lease.release()
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
