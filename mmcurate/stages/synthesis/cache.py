"""A shard's teacher answers by request hash, so that a rerun never pays for an answer twice.

One JSON line per answer, appended and flushed as it arrives, before it is validated. A line cut
short by a crash is dropped (and cut off the file) on the next load: that answer is asked again.
Not fsynced: a power cut costs repeated requests, never a wrong answer. Without a file (a stage
used outside a run) answers are kept in memory only.

On an object store, where nothing can be appended to, the answers go out as whole objects of up
to `BATCH` lines, in a folder beside the file's name (`000003/000000.jsonl`, ...): a crash costs
the answers since the last object, asked again.
"""

from __future__ import annotations

import json
from typing import IO, Any

from mmcurate.storage import paths

BATCH = 64


class ResponseCache:
    """hash -> cached entry, backed by an append-only JSONL file."""

    def __init__(self, path: Any):
        self.path = path
        self.entries: dict[str, dict] = {}
        self._out: IO[str] | None = None
        self._batch: list[str] | None = None
        self._objects = 0

    def __enter__(self) -> ResponseCache:
        if self.path is None:
            return self
        if paths.is_remote(self.path):
            return self._open_objects()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        good = 0
        if self.path.exists():
            data = self.path.read_bytes()
            for line in data.splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    break
                try:
                    item = json.loads(line)
                    self.entries[item["hash"]] = item["entry"]
                except (ValueError, KeyError, TypeError):
                    break
                good += len(line)
            if good < len(data):
                with open(self.path, "r+b") as f:
                    f.truncate(good)
        self._out = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by __exit__
        return self

    def _open_objects(self) -> ResponseCache:
        folder = self.path.parent / self.path.stem
        numbers = sorted(int(n[:-6]) for n in paths.names(folder) if n.endswith(".jsonl") and n[:-6].isdigit())
        for k in numbers:  # each object is whole: PUTs are
            for line in paths.read_text(folder / f"{k:06d}.jsonl").splitlines():
                item = json.loads(line)
                self.entries[item["hash"]] = item["entry"]
        self._objects = numbers[-1] + 1 if numbers else 0
        self._batch = []
        return self

    def _put_batch(self) -> None:
        if self._batch:
            target = self.path.parent / self.path.stem / f"{self._objects:06d}.jsonl"
            target.write_text("".join(self._batch), encoding="utf-8")
            self._objects += 1
            self._batch = []

    def __exit__(self, *exc) -> None:
        if self._batch is not None:
            self._put_batch()
            self._batch = None
        if self._out is not None:
            self._out.close()
            self._out = None

    def get(self, digest: str) -> dict | None:
        return self.entries.get(digest)

    def put(self, digest: str, entry: dict) -> None:
        self.entries[digest] = entry
        line = json.dumps({"hash": digest, "entry": entry}) + "\n"
        if self._out is not None:
            self._out.write(line)
            self._out.flush()
        elif self._batch is not None:
            self._batch.append(line)
            if len(self._batch) >= BATCH:
                self._put_batch()
