"""A shard's teacher answers by request hash, so that a rerun never pays for an answer twice.

One JSON line per answer, appended and flushed as it arrives, before it is validated. A line cut
short by a crash is dropped (and cut off the file) on the next load: that answer is asked again.
Not fsynced: a power cut costs repeated requests, never a wrong answer. Without a file (a stage
used outside a run) answers are kept in memory only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO


class ResponseCache:
    """hash -> cached entry, backed by an append-only JSONL file."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, dict] = {}
        self._out: IO[str] | None = None

    def __enter__(self) -> ResponseCache:
        if self.path is None:
            return self
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

    def __exit__(self, *exc) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def get(self, digest: str) -> dict | None:
        return self.entries.get(digest)

    def put(self, digest: str, entry: dict) -> None:
        self.entries[digest] = entry
        if self._out is not None:
            self._out.write(json.dumps({"hash": digest, "entry": entry}) + "\n")
            self._out.flush()
