"""Files that appear whole or not at all: write to a temp file beside the target, then rename.

On an object store (`storage.paths.is_remote`) there is no rename: the temp file is local, and it is
put in place as one object (a PUT, or a multipart upload the store publishes only when complete),
so the object is as whole as a renamed file is. A folder is written under a temp prefix and moved
(copied, then deleted) into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmcurate.storage import paths

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# read once, at import (before any thread): os.umask can only be read by setting it. A temp file
# is made 0600; before it takes its target's name it gets the mode an open() would have given it,
# so that teammates on a shared file system read a run and its exports as they read any file
UMASK = _umask()
FILE_MODE, FOLDER_MODE = 0o666 & ~UMASK, 0o777 & ~UMASK


@contextmanager
def atomic_path(target: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success it is fsynced and renamed to target.

    `fsync=False` for files that may be lost in a power cut but never seen half-written (caches).
    With fsync the folder is synced after the rename too: until then a power cut can undo the rename,
    and a stage's stats file (written after its shard) could outlive the shard it marks as done."""
    if paths.is_remote(target):
        yield from _via_local_file(target)
        return
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if fsync:
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
        if target.is_dir():  # a ledger in parts becoming one file again
            remove(target)
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, target)
        if fsync:
            _fsync_folder(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _via_local_file(target) -> Iterator[Path]:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        paths.put(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(target: str | Path, data: object, fsync: bool = True) -> None:
    """Write JSON atomically."""
    with atomic_path(target, fsync) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def write_parquet(target: str | Path, table: pa.Table) -> None:
    """Write a parquet file atomically (zstd; deterministic for identical tables)."""
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_with(target: str | Path, writer: Callable[[Path], None]) -> None:
    """Let `writer` fill a temp path, then move it into place atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)


def remove_stale_temps(folder: str | Path) -> int:
    """Delete temp files (and temp folders: a ledger's parts being written) a killed run left
    behind; return how many."""
    if paths.is_remote(folder):  # only folders are ever written under a temp name there
        stale = [folder / name for name in paths.names(folder) if name.startswith(".") and name.endswith(TMP_SUFFIX)]
        for path in stale:
            paths.remove(path)
        return len(stale)
    count = 0
    for path in sorted(Path(folder).rglob(f".*{TMP_SUFFIX}"), key=lambda p: len(p.parts)):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
        else:
            continue  # inside a temp folder removed above
        count += 1
    return count


@contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside `target`; on success whatever `target` was (a file or a folder)
    is replaced by it. Between removing the old and renaming the new there is a moment with neither:
    a crash there leaves the run unfinished, and the next run writes it again."""
    if paths.is_remote(target):
        yield from _remote_folder(target)
        return
    target = Path(target)
    tmp = target.parent / f".{target.name}{TMP_SUFFIX}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        remove(target)
        os.replace(tmp, target)
        _fsync_folder(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remote_folder(target) -> Iterator:
    tmp = target.parent / f".{target.name}{TMP_SUFFIX}"
    paths.remove(tmp)
    try:
        yield tmp
        paths.remove(target)
        paths.move_folder(tmp, target)
    finally:
        paths.remove(tmp)


def remove(path) -> None:
    """Remove a file or a folder (on a store, every object under the prefix), if there is one."""
    paths.remove(path)
