"""Which files `input.path` names, their fingerprint, and the units tasks read them in.

URL lists (parquet, csv, tsv, jsonl; a glob or a brace pattern; .gz too), a pool's tars or
parquet files, or an image folder's images and captions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from mmcurate.ingest import pools
from mmcurate.schemas.config import InputConfig
from mmcurate.schemas.sections import DOCUMENT_FORMATS
from mmcurate.schemas.errors import InputError
from mmcurate.storage import paths

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def resolve_inputs(source: str | InputConfig) -> list[Path]:
    """The input files `input.path` names (a file, a glob or a brace pattern such as
    `pool/{00000..00099}.tar`; for an image folder, every image and caption under it), sorted;
    errors name the problem."""
    cfg = source if isinstance(source, InputConfig) else None
    pattern = cfg.path if cfg else source
    try:
        if cfg is not None and cfg.kind == "image_folder":
            return _folder_files(cfg)
        files = [f for part in _braces(pattern) for f in _resolve(part)]
    except InputError:
        raise
    except (OSError, ValueError) as err:  # a store that cannot be reached, or refuses these credentials
        raise InputError(f"input.path: {pattern}: cannot list ({err})") from None
    kind = cfg.kind if cfg else "urls"
    for f in files:
        if kind == "urls":
            format_of(f)
        elif kind in DOCUMENT_FORMATS:
            if format_of(f) not in ("jsonl", "parquet"):
                raise InputError(f"input.path: {f}: input.format {kind} reads JSONL or parquet files")
        elif f.suffix.lower() != _POOL_SUFFIX[kind]:
            raise InputError(f"input.path: {f}: input.format {kind} reads {_POOL_SUFFIX[kind]} files")
    return files


_POOL_SUFFIX = {"webdataset": ".tar", "img2dataset_parquet": ".parquet"}


def _braces(pattern: str) -> list[str]:
    if "{" not in pattern:
        return [pattern]
    import braceexpand

    return list(braceexpand.braceexpand(pattern))


def _folder_files(cfg: InputConfig) -> list[Path]:
    folder = paths.as_path(cfg.path, "input.path")
    if not folder.is_dir():
        raise InputError(f"input.path: {cfg.path}: not a folder (input.format image_folder reads a folder of images)")
    wanted = (*pools.FOLDER_IMAGES, ".txt")
    files = [p for p in paths.glob(f"{str(folder).rstrip('/')}/**/*") if p.suffix.lower() in wanted]
    if cfg.captions is not None:
        captions = paths.as_path(cfg.captions, "input.captions")
        if not captions.is_file():
            raise InputError(f"input.captions: {cfg.captions}: file not found")
        format_of(captions)
        files.append(captions)
    if not pools.folder_images(files, folder):
        raise InputError(f"input.path: {cfg.path}: holds no image ({', '.join(pools.FOLDER_IMAGES)})")
    return files


def _resolve(pattern: str) -> list:
    if any(ch in pattern for ch in "*?["):
        files = paths.glob(pattern)
        if not files:
            raise InputError(f"input.path: no file matches {pattern!r}")
    else:
        path = paths.as_path(pattern, "input.path")
        if not path.exists():
            raise InputError(f"input.path: {pattern}: file not found")
        if not path.is_file():
            raise InputError(f"input.path: {pattern}: not a file (use a glob such as {pattern}/*.parquet, "
                             "or input.format: image_folder for a folder of images)")
        files = [path]
    return files


def format_of(path: Path) -> str:
    """The input format of a file, from its extension."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    kind = FORMATS.get(suffixes[-1] if suffixes else "")
    if kind is None:
        raise InputError(f"input.path: {path}: unknown format (expected one of {', '.join(sorted(FORMATS))}, optionally .gz)")
    if kind == "parquet" and path.suffix.lower() == ".gz":
        raise InputError(f"input.path: {path}: parquet is compressed inside; do not gzip it")
    return kind


def fingerprint(files: list[Path]) -> str:
    """A content hash of the input files, names included: the fingerprint of run dirs made before
    per-file records (`combined_fingerprint`), which a resume of such a run dir still checks."""
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.name).encode() + b"\0")
        _hash_into(h, path)
    return h.hexdigest()


def _hash_into(h, path: Path) -> None:
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as err:
        raise InputError(f"input.path: {path}: cannot read ({err.strerror or err})") from None


@dataclass(frozen=True)
class Unit:
    """A piece of the input one task reads: a text file or a tar, consecutive row groups of a
    parquet file, or some of a folder's images."""

    path: str  # as input.path gave it (the ledger's `source`)
    row_groups: tuple[int, ...] | None = None
    first_line: int = 0  # rows of the file before these row groups
    members: tuple[str, ...] | None = None  # an image folder's: images relative to it


def units(files: list[Path], rows_per_unit: int, cfg: InputConfig | None = None) -> list[Unit]:
    """The input cut into units, in row order: parquet files by row groups (about `rows_per_unit`
    rows each, counted from their footers), an image folder by its sorted images, other files
    whole (a CSV or gzip stream has no boundaries to start at)."""
    if cfg is not None and cfg.kind == "image_folder":
        if cfg.captions is not None:
            return [Unit(cfg.captions)]
        names = pools.folder_images(files, paths.as_path(cfg.path, "input.path"))
        return [Unit(cfg.path, None, i, tuple(names[i:i + rows_per_unit])) for i in range(0, len(names), rows_per_unit)]
    out = []
    for path in files:
        if path.suffix.lower() != ".parquet":
            out.append(Unit(str(path)))
            continue
        meta = pools.open_parquet(path).metadata
        groups, start, line, rows = [], 0, 0, 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if groups and rows + n > rows_per_unit:
                out.append(Unit(str(path), tuple(groups), start))
                groups, start, rows = [], line, 0
            groups.append(g)
            rows += n
            line += n
        out.append(Unit(str(path), tuple(groups), start))  # an empty file: no row groups, still checked
    return out


def stat_of(path: Path) -> dict:
    """What says a file is unchanged without reading it: size, mtime, ctime and inode (any write,
    or a copy made to look like the file, changes one of them)."""
    return paths.identity(path)


def file_record(path: Path) -> dict:
    """One input file's name, stat and content hash (read once, when a run dir is made)."""
    stat = stat_of(path)
    h = hashlib.sha256()
    _hash_into(h, path)
    return {"path": str(path), "name": path.name, **stat, "sha256": h.hexdigest()}


def combined_fingerprint(records: list[dict]) -> str:
    """The input's fingerprint from its files' records: names and content hashes, in order."""
    h = hashlib.sha256(b"mmcurate-input-v2\0")
    for r in records:
        h.update(f"{r['name']}\0{r['sha256']}\n".encode())
    return h.hexdigest()
