"""Pools already downloaded: webdataset tars (as img2dataset writes them), img2dataset's parquet
output, a folder of images. Ingest reads no image here: a tar's headers (each member's place),
a parquet file's columns but the image's, a folder's names and captions. The `load` stage reads
the bytes later, where they lie (`read_images`).

Every sample is accounted for: a key with no image, a member the tar ends inside, a header that
cannot be read, a row img2dataset did not download, each becomes a row that fails with a reason.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa

from mmcurate.ingest.rows import RawRow
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import InputConfig
from mmcurate.schemas.errors import InputError
from mmcurate.storage import paths

TAR_IMAGES = ("jpg", "jpeg", "png", "webp")  # the members webdataset and img2dataset name images by
FOLDER_IMAGES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
PARQUET_IMAGES = ("jpg", "png", "webp")  # img2dataset's column is named after its encode format
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's split of a member name: key, extension
MAX_SIDECAR_BYTES = 1 << 20  # a caption or json member larger than this is not read
_BLOCK = tarfile.BLOCKSIZE


def pool_row(source: str, line: int, key: str | None, caption: object, meta: dict, member: str | None = None,
             offset: int | None = None, size: int | None = None, problem: tuple[str, str] | None = None) -> RawRow:
    """A pool's row: its caption, its origin (key, the pool's uid and url, original size), the image's place."""
    def dim(name: str) -> int | None:
        value = meta.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31 else None

    uid = meta.get("uid")
    origin = {
        C.SOURCE_KEY: key,
        C.SOURCE_UID: uid if isinstance(uid, str) else None,
        C.MEMBER: member,
        C.MEMBER_OFFSET: offset,
        C.MEMBER_SIZE: size,
        C.ORIGINAL_WIDTH: dim("original_width"),
        C.ORIGINAL_HEIGHT: dim("original_height"),
    }
    url = meta.get("url")
    return RawRow(source, line, url if isinstance(url, str) else None, caption, problem, origin)


# ----------------------------------------------------------------------------- webdataset tars


def read_tar(path: Any, source: str) -> Iterator[RawRow]:
    """The samples of one tar, in member order: consecutive members sharing a key make one
    (webdataset's grouping). A header that cannot be read becomes a failed row of its own and
    reading goes on at the next good header; a member the file ends inside fails its sample."""
    size = path.stat().st_size
    line, end, group, key, start, resumed = 0, 0, {}, None, 0, False
    with path.open("rb") as f:
        while start < size:
            f.seek(start)
            try:  # a TarFile reads on from where `f` stands; member offsets stay the file's
                tar = tarfile.open(fileobj=f, mode="r:", ignore_zeros=True)  # broken headers: skipped to the next
            except tarfile.ReadError as err:
                if start == 0 and not resumed:
                    yield pool_row(source, 1, None, None, {}, problem=("malformed_row", f"not a readable tar file ({err})"))
                    return
                start += _BLOCK  # a header it cannot read even alone: one block on
                continue
            broken = None
            while True:
                try:
                    info = tar.next()
                except (tarfile.ReadError, OSError, EOFError) as err:
                    broken = err
                    break
                if info is None:
                    break
                if info.offset > end and not resumed and _nonzero(f, end, info.offset) and not _global_header(f, end):
                    if group:  # the sample before the broken header ends there
                        line += 1
                        yield _sample(f, size, source, line, key, group)
                        group, key = {}, None
                    line += 1
                    detail = f"bytes {end}-{info.offset}: a broken tar header; {info.offset - end} bytes skipped to the next member"
                    yield pool_row(source, line, None, None, {}, problem=("malformed_row", detail))
                resumed = False
                end = info.offset_data + -(-info.size // _BLOCK) * _BLOCK
                match = _KEY.match(info.name) if info.isfile() else None
                if match is None:
                    continue  # a folder or a file that is no sample's part (no extension)
                if match.group(1) != key and group:
                    line += 1
                    yield _sample(f, size, source, line, key, group)
                    group = {}
                key = match.group(1)
                group[match.group(2).lower()] = info
            if broken is None or end > size:  # the end, or a member the file ends inside (its sample: truncated)
                break
            # a header tarfile refuses mid-way (one after a long name, say): the sample before it ends
            # there, and reading starts again past it (the bytes up to the next good header are this row's)
            if group:
                line += 1
                yield _sample(f, size, source, line, key, group)
                group, key = {}, None
            start = max(tar.offset, end) + _BLOCK
            line += 1
            yield pool_row(source, line, None, None, {}, problem=(
                "malformed_row", f"byte {end}: an unreadable tar header ({broken}); reading goes on at the next good one"))
            end, resumed = start, True
        if group:
            line += 1
            yield _sample(f, size, source, line, key, group)
        if end < size and not resumed and _nonzero(f, end, size):
            line += 1
            yield pool_row(source, line, None, None, {}, problem=("malformed_row", f"bytes {end}-{size}: not a tar member"))


def _global_header(f, at: int) -> bool:
    """Whether a pax global header starts at `at` (git archive writes one): tarfile reads it into
    the archive's settings, so the next member starts past it without any header being broken."""
    f.seek(at)
    try:
        return tarfile.TarInfo.frombuf(f.read(_BLOCK), "utf-8", "surrogateescape").type == tarfile.XGLTYPE
    except tarfile.HeaderError:
        return False


def _nonzero(f, start: int, stop: int) -> bool:
    """Whether bytes start..stop of `f` hold anything but the zero blocks that end an archive."""
    f.seek(start)
    while start < stop:
        block = f.read(min(1 << 20, stop - start))
        if not block:
            return False
        if block.strip(b"\0"):
            return True
        start += len(block)
    return False


def _sample(f, size: int, source: str, line: int, key: str, group: dict[str, tarfile.TarInfo]) -> RawRow:
    cut = next((m for m in group.values() if m.offset_data + m.size > size), None)
    if cut is not None:
        missing = cut.offset_data + cut.size - size
        return pool_row(source, line, key, None, {}, problem=("truncated", f"{cut.name}: the tar ends {missing:,} bytes before this member does"))
    meta, problem = {}, None
    if "json" in group:
        meta, problem = _json(_member(f, group["json"]), group["json"].name)
    caption = _caption(_member(f, group["txt"])) if "txt" in group else meta.get("caption")
    image = next((group[ext] for ext in TAR_IMAGES if ext in group), None)
    if problem is None and image is None:
        problem = ("missing_image", f"{key}: no {'/'.join('.' + e for e in TAR_IMAGES)} member (has {', '.join(sorted(group))})")
    if image is None:
        return pool_row(source, line, key, caption, meta, problem=problem)
    return pool_row(source, line, key, caption, meta, image.name, image.offset_data, image.size, problem)


def _member(f, info: tarfile.TarInfo) -> bytes | None:
    if info.size > MAX_SIDECAR_BYTES:
        return None
    f.seek(info.offset_data)
    return f.read(info.size)


def _caption(data: bytes | None) -> object:
    if data is None:
        return None
    return data.decode("utf-8", "surrogateescape")  # bad UTF-8 then fails as not_utf8, as a list's does


def _json(data: bytes | None, name: str) -> tuple[dict, tuple[str, str] | None]:
    if data is None:
        return {}, ("malformed_row", f"{name}: larger than {MAX_SIDECAR_BYTES:,} bytes (not read)")
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError) as err:
        return {}, ("malformed_row", f"{name}: not JSON ({err})")
    if not isinstance(meta, dict):
        return {}, ("malformed_row", f"{name}: a JSON value that is not an object")
    return meta, None


# ----------------------------------------------------------------------------- img2dataset's parquet


def image_column(names: list[str], cfg: InputConfig, path: Any) -> str:
    """The image bytes column of an img2dataset parquet file, or exit 2 naming input.image_col."""
    if cfg.image_col is not None:
        if cfg.image_col not in names:
            raise InputError(f"input.image_col: column {cfg.image_col!r} not in {path} (columns found: {', '.join(names[:20])})")
        return cfg.image_col
    found = next((c for c in PARQUET_IMAGES if c in names), None)
    if found is None:
        raise InputError(f"input.image_col: {path} has no jpg, png or webp column (columns found: {', '.join(names[:20])}); "
                         "name the image bytes column")
    return found


def open_parquet(path: Any):
    """An input parquet file's reader, or exit 2 naming it."""
    try:
        return paths.parquet_file(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"input.path: {path}: not a readable parquet file ({err})") from None


def read_pool_parquet(path: Any, source: str, cfg: InputConfig, row_groups: list[int] | None, line: int) -> Iterator[RawRow]:
    """The rows of img2dataset parquet output, without the image column: a row it did not download
    (its `status`) fails as missing_image with img2dataset's error."""
    pf = open_parquet(path)
    names = pf.schema_arrow.names
    image_column(names, cfg, path)
    if cfg.caption_col not in names:
        raise InputError(f"input.caption_col: column {cfg.caption_col!r} not in {path} (columns found: {', '.join(names[:20])})")
    wanted = [cfg.caption_col] + [c for c in ("url", "key", "uid", "status", "error_message", "original_width",
                                              "original_height") if c in names and c != cfg.caption_col]
    if cfg.url_col in names and cfg.url_col not in wanted:
        wanted.append(cfg.url_col)
    for batch in pf.iter_batches(batch_size=65536, columns=wanted, row_groups=row_groups):
        for record in batch.to_pylist():
            line += 1
            meta = {**record, "url": record.get(cfg.url_col)}
            status = record.get("status")
            problem = None
            if status is not None and status != "success":
                problem = ("missing_image", f"img2dataset: {status}: {record.get('error_message') or 'no image'}")
            key = record.get("key")
            yield pool_row(source, line, key if isinstance(key, str) else None, record[cfg.caption_col], meta,
                           problem=problem)


# ----------------------------------------------------------------------------- a folder of images


def folder_images(files: list[Any], folder: Any) -> list[str]:
    """The images among a folder's files, as paths relative to it, sorted."""
    base = str(folder).rstrip("/")
    return sorted(str(p)[len(base) + 1:] for p in files if p.suffix.lower() in FOLDER_IMAGES)


def read_folder(folder: Any, source: str, members: tuple[str, ...], first_line: int = 0) -> Iterator[RawRow]:
    """Images of a folder with a sidecar caption each (`cat.jpg` and `cat.txt`); `first_line`: the
    folder's images before these."""
    for line, name in enumerate(members, start=first_line + 1):
        sidecar = paths.as_path(f"{str(folder).rstrip('/')}/{name}").with_suffix(".txt")
        if not inside(sidecar, folder):  # a link out of the folder is never read
            yield pool_row(source, line, name, None, {}, name, problem=(
                "malformed_row", f"{name}: its caption {sidecar.name} links outside input.path (refused, unread)"))
            continue
        caption = _caption(_read_small(sidecar))
        problem = None if sidecar.exists() else ("missing_caption", f"{name}: no {sidecar.name} beside it")
        yield pool_row(source, line, name, caption, {}, name, problem=problem)


def inside(path: Any, folder: Any) -> bool:
    """Whether `path`, links followed, lies under `folder` (on a store, where nothing links: always)."""
    if paths.is_remote(path):
        return True
    real = os.path.realpath(folder)
    return os.path.realpath(path).startswith(real.rstrip(os.sep) + os.sep)


def _read_small(path: Any) -> bytes | None:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SIDECAR_BYTES + 1)
    except OSError:
        return None
    return data[:MAX_SIDECAR_BYTES]


def named_row(raw: RawRow) -> RawRow:
    """A captions file's row (the image's name read where a list's URL is) as a pool row; a name
    that leaves input.path fails, unread."""
    name = raw.url
    if raw.problem is not None:
        return RawRow(raw.source, raw.line, None, None, raw.problem, pool_row(raw.source, raw.line, None, None, {}).pool)
    problem = None
    if not isinstance(name, str) or not name.strip() or PurePosixPath(name).name in ("", ".", ".."):
        problem, name = ("missing_image", "the row names no image file"), None
    elif PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts or "\\" in name or "\0" in name:
        problem, name = ("malformed_row", f"{name!r}: names a file outside input.path (refused)"), None
    return pool_row(raw.source, raw.line, name, raw.caption, {}, name, problem=problem)


# ----------------------------------------------------------------------------- the images, for `load`


def read_images(rows: pa.Table, cfg: InputConfig, base: str, max_bytes: int) -> list[bytes | tuple[str, str]]:
    """Each row's stored image bytes, or (reason, detail) where they cannot be read (or hold more
    than `max_bytes`). A shard's rows come from few files: each is opened once."""
    sources = rows.column(C.SOURCE).to_pylist()
    out: list = [None] * rows.num_rows
    by_source: dict[str, list[int]] = {}
    for i, source in enumerate(sources):
        by_source.setdefault(source, []).append(i)
    if cfg.kind == "img2dataset_parquet":
        lines = rows.column(C.SOURCE_LINE).to_pylist()
        for source, idx in by_source.items():
            for i, value in zip(idx, _parquet_images(paths.located(base, source), cfg, [lines[i] - 1 for i in idx])):
                out[i] = value
        return [_bounded(v, max_bytes) for v in out]
    members = rows.column(C.MEMBER).to_pylist()
    if cfg.kind == "image_folder":
        folder = str(paths.located(base, cfg.path)).rstrip("/")
        return [_file(paths.as_path(f"{folder}/{name}"), folder, cfg.path, name, max_bytes) for name in members]
    offsets, sizes = rows.column(C.MEMBER_OFFSET).to_pylist(), rows.column(C.MEMBER_SIZE).to_pylist()
    for source, idx in by_source.items():
        with paths.located(base, source).open("rb") as f:
            for i in idx:
                if sizes[i] > max_bytes:
                    out[i] = _too_large(sizes[i], max_bytes)
                    continue
                f.seek(offsets[i])
                data = f.read(sizes[i])
                out[i] = data if len(data) == sizes[i] else ("truncated", f"{members[i]}: {len(data):,} of {sizes[i]:,} bytes")
    return out


def _too_large(size: int, max_bytes: int) -> tuple[str, str]:
    return "file_too_large", f"{size:,} bytes > download.max_image_bytes {max_bytes:,}"


def _bounded(value: bytes | tuple[str, str], max_bytes: int) -> bytes | tuple[str, str]:
    return _too_large(len(value), max_bytes) if isinstance(value, bytes) and len(value) > max_bytes else value


def _file(path: Any, folder: str, shown: str, name: str, max_bytes: int) -> bytes | tuple[str, str]:
    if not inside(path, folder):  # a link out of the folder (or a captions row through one) is never read
        return ("missing_image", f"{name}: links outside {shown} (refused, unread)")
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        return ("missing_image", f"{name}: no such file under {shown}")
    except (OSError, ValueError) as err:  # ValueError: a name no file system takes (NUL)
        return ("missing_image", f"{name}: cannot read ({getattr(err, 'strerror', None) or err})")
    return _bounded(data, max_bytes)


def _parquet_images(path: Any, cfg: InputConfig, indexes: list[int]) -> list[bytes | tuple[str, str]]:
    """The image bytes at `indexes` (0-based rows of the file): only the row groups holding them are
    read, a batch at a time, and only the wanted rows' bytes are kept."""
    pf = paths.parquet_file(path)
    column = image_column(pf.schema_arrow.names, cfg, path)
    starts = [0]
    for g in range(pf.metadata.num_row_groups):
        starts.append(starts[-1] + pf.metadata.row_group(g).num_rows)
    wanted = set(indexes)
    groups = sorted({bisect.bisect_right(starts, i) - 1 for i in wanted})
    rows = (r for g in groups for r in range(starts[g], starts[g + 1]))  # the file rows, in the order read
    found: dict[int, object] = {}
    for batch in pf.iter_batches(batch_size=256, row_groups=groups, columns=[column]):
        values = batch.column(0)
        for k, r in zip(range(batch.num_rows), rows):
            if r in wanted:
                found[r] = values[k].as_py()
    return [found.get(i) or ("missing_image", f"row {i + 1}: the {column} column is empty") for i in indexes]
