"""Files appear whole or not at all, and a rename is on disk before the next file is written."""

from __future__ import annotations

import os
import stat

import pytest

from mmcurate.engine import atomic


def test_a_failed_write_leaves_neither_the_target_nor_a_temp(tmp_path):
    target = tmp_path / "shard" / "000000.parquet"

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic.write_with(target, fail)
    assert list((tmp_path / "shard").iterdir()) == []


def test_file_then_folder_are_synced_before_the_next_write(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def record(fd):
        mode = os.fstat(fd).st_mode
        synced.append("folder" if stat.S_ISDIR(mode) else "file")
        return real(fd)

    monkeypatch.setattr(os, "fsync", record)
    atomic.write_json(tmp_path / "000000.parquet", {"rows": 1})
    atomic.write_json(tmp_path / "000000.stats.json", {"done": True})
    # each file's contents, then the folder entry of its rename, before the stats file is begun
    assert synced == ["file", "folder", "file", "folder"]
    atomic.write_json(tmp_path / "cache.json", {}, fsync=False)
    assert len(synced) == 4  # caches may be lost in a power cut: no sync at all


def test_stale_temps_are_removed(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".000001.parquet.x1.tmp").write_bytes(b"")
    (tmp_path / "000000.parquet").write_bytes(b"ok")
    assert atomic.remove_stale_temps(tmp_path) == 1
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["000000.parquet"]


def test_files_get_the_mode_the_umask_gives(tmp_path):
    """Temp files are made 0600; what takes the target's name is readable as the umask says."""
    atomic.write_json(tmp_path / "manifest.json", {"a": 1})  # under the process's umask (read at import)
    atomic.write_with(tmp_path / "ledger.parquet", lambda tmp: tmp.write_bytes(b"x"))
    with atomic.atomic_folder(tmp_path / "parts") as folder:
        (folder / "part-000000.parquet").write_bytes(b"x")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"manifest.json": atomic.FILE_MODE, "ledger.parquet": atomic.FILE_MODE, "parts": atomic.FOLDER_MODE}
    assert atomic.UMASK != 0o022 or atomic.FILE_MODE == 0o644  # umask 022: the group and the world read
