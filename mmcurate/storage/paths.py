"""Local paths and object-store locations (`s3://bucket/prefix`) behind one small set of calls.

A local location is a `pathlib.Path`; an `s3://` one a `upath.UPath` over s3fs, whose connection
settings come from the standard AWS environment variables (`AWS_ENDPOINT_URL`, `AWS_REGION`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, ...), read by botocore in every process
that touches the store, workers included. Nothing here writes a setting anywhere, and a location
carrying credentials is refused: only the location itself is ever recorded.

Both kinds answer the `pathlib` calls the run uses (`/`, `name`, `exists`, `read_text`, `glob`,
`open`); what differs is here: reading parquet through pyarrow, putting a finished local file in
place (one whole-object PUT on a store), listing, removing, and a file's identity for the input
fingerprint. Every byte to a store goes through s3fs and Python's sockets (pyarrow reads through
an fsspec handler, never its own C++ S3 client), so what guards the process's connections guards
these too.
"""

from __future__ import annotations

import os
import re
import shutil
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mmcurate.schemas.locations import URI, check_location

# s3fs caches listings per process: a run's files are written by other processes (workers), so a
# cached listing would hide the stats files they leave
_OPTIONS: dict[str, Any] = {"use_listings_cache": False}


def is_uri(location: str | os.PathLike) -> bool:
    return bool(URI.match(str(location)))


def as_path(location: str | os.PathLike, key: str = "path") -> Any:
    """A `Path` for a local location, a `UPath` for an `s3://` one; another scheme, or a URI with
    credentials in it, is a ConfigError naming `key` (`schemas.locations`)."""
    if is_remote(location):
        return location
    text = str(location)
    found = check_location(text, key)
    return Path(text) if found is None else _remote(*found)


def _remote(scheme: str, key: str) -> Any:
    from upath import UPath

    return UPath(f"{scheme}://{key}", **_OPTIONS)


def located(cwd: str, location: str) -> Any:
    """An input file as recorded (a URI, or a path relative to the directory the run started in)."""
    return as_path(location, "input.path") if is_uri(location) else Path(cwd, location)


def is_remote(path: object) -> bool:
    """Whether `path` is an object-store location (not a local or mounted path)."""
    return not isinstance(path, Path) and hasattr(path, "fs") and hasattr(path, "protocol")


def _key(path: Any) -> str:
    return path.path


@lru_cache(maxsize=8)
def _arrow_fs(fs: Any) -> pafs.FileSystem:
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def arrow(path: Any) -> tuple[str, pafs.FileSystem | None]:
    """(path, filesystem) as pyarrow's readers and writers take them."""
    if is_remote(path):
        return _key(path), _arrow_fs(path.fs)
    return str(path), None


def read_table(path: Any, columns: list[str] | None = None, **kwargs: Any):
    """A parquet file (on a store, or a folder of parts there) as a table, only `columns` read.
    On a store a file is read through one open object (one HEAD, then ranged GETs for the footer
    and the columns): pyarrow's own file-system calls would ask for its size three times."""
    if is_remote(path):
        with path.fs.open(_key(path), "rb", cache_type="none") as f:
            if f.details.get("type") != "directory":  # else a folder of parts: read below as a dataset
                return pq.read_table(f, columns=columns, **kwargs)
    where, fs = arrow(path)
    return pq.read_table(where, columns=columns, filesystem=fs, **kwargs)


def parquet_file(path: Any, **kwargs: Any) -> pq.ParquetFile:
    """A parquet file's reader (metadata, row groups, batches), over one open object on a store."""
    if is_remote(path):
        return pq.ParquetFile(path.fs.open(_key(path), "rb", cache_type="none"), **kwargs)
    return pq.ParquetFile(str(path), **kwargs)


def read_text(path: Any) -> str:
    """A small file's text (on a store one GET, where opening it would HEAD it first)."""
    if is_remote(path):
        return path.fs.cat_file(_key(path)).decode("utf-8")
    return Path(path).read_text(encoding="utf-8")


def scan_parquet(files: list[Any]) -> Any:
    """A polars LazyFrame over parquet files; on a store read through pyarrow's dataset over the
    fsspec handler (polars' own object-store client would bypass the process's sockets)."""
    import polars as pl

    if not files or not is_remote(files[0]):
        return pl.scan_parquet(files)
    import pyarrow.dataset as ds

    return pl.scan_pyarrow_dataset(ds.dataset([_key(f) for f in files], format="parquet", filesystem=_arrow_fs(files[0].fs)))


def put(local: Path, target: Any) -> None:
    """Put a finished local file at an object-store location: the object appears whole or not at all
    (one PUT, or a multipart upload that the store publishes only when it completes)."""
    target.fs.put_file(str(local), _key(target))


def put_folder(local: Path, target: Any) -> None:
    """Put a finished local folder's files under an object-store prefix."""
    for file in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        put(file, target / file.relative_to(local).as_posix())


def move_folder(source: Any, target: Any) -> None:
    """Move every object under one prefix to another (server-side copies, then the deletes)."""
    keys = source.fs.find(_key(source))
    if keys:
        source.fs.copy(keys, [_key(target) + key[len(_key(source)):] for key in keys])
    remove(source)


def remove(path: Any) -> None:
    """Remove a file or a folder (on a store: every object under the prefix), if there is one."""
    if is_remote(path):
        try:
            path.fs.rm(_key(path), recursive=True)
        except FileNotFoundError:
            pass
        return
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def names(folder: Any) -> set[str]:
    """The names directly inside `folder` (one listing; empty when there is none)."""
    try:
        if is_remote(folder):
            return {PurePosixPath(p.rstrip("/")).name for p in folder.fs.ls(_key(folder), detail=False)}
        return set(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return set()


def glob(pattern: str) -> list[Any]:
    """The files a glob names, sorted (on a store, `*` and `**` match as fsspec's glob does)."""
    if is_uri(pattern):
        base = as_path(re.split(r"[*?\[]", pattern, maxsplit=1)[0], "input.path")
        hits = base.fs.glob(URI.sub("", pattern), detail=True)
        return [_remote(base.protocol, p) for p, info in sorted(hits.items()) if info.get("type") == "file"]
    import glob as _glob

    return sorted(Path(p) for p in _glob.glob(pattern, recursive=True) if Path(p).is_file())


def identity(path: Any) -> dict:
    """What says a file is unchanged without reading it. Locally size, mtime, ctime and inode (any
    write, or a copy made to look like the file, changes one of them); on a store size, ETag and
    the time the object was written (a new PUT changes the last two)."""
    if is_remote(path):
        info = path.fs.info(_key(path))
        return {"size": int(info["size"]), "etag": str(info.get("ETag", "")).strip('"'),
                "modified": str(info.get("LastModified", ""))}
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}
