"""Readers that yield every row of an input file, malformed ones included: URL lists (parquet,
csv, tsv, jsonl; .gz too) here, a pool's tars, parquet files and image folders in `pools.py`.

A hostile file must cost neither a row nor the driver's memory: an over-long line is skipped
unread and fails alone; a CSV quote that never closes fails its line, and the lines after it
are read again as rows.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from mmcurate.ingest import pools
from mmcurate.ingest.files import format_of
from mmcurate.ingest.rows import RawRow
from mmcurate.schemas.config import InputConfig
from mmcurate.schemas.errors import InputError
from mmcurate.storage import paths

MAX_FIELD_BYTES = 64 * 1024 * 1024
csv.field_size_limit(min(sys.maxsize, MAX_FIELD_BYTES))


def _open_binary(path: Path) -> io.BufferedIOBase:
    try:
        raw = io.BufferedReader(path.open("rb")) if paths.is_remote(path) else path  # readline(limit)
        return gzip.open(raw, "rb") if path.suffix.lower() == ".gz" else open(raw, "rb") if raw is path else raw
    except OSError as err:
        raise InputError(f"input.path: {path}: cannot read ({err.strerror or err})") from None


def read_rows(path: Path, cfg: InputConfig, row_groups: list[int] | None = None, first_line: int = 0,
              members: tuple[str, ...] | None = None, source: str | None = None) -> Iterator[RawRow]:
    """Yield every row of one input file, malformed ones included (with a problem); of a parquet
    file, optionally only some row groups (`first_line`: the rows before them); of an image
    folder, the `members` named. `source`: the path as input.path gave it."""
    source = str(path) if source is None else source
    try:
        if cfg.kind == "webdataset":
            yield from pools.read_tar(path, source)
        elif cfg.kind == "img2dataset_parquet":
            yield from pools.read_pool_parquet(path, source, cfg, row_groups, first_line)
        elif cfg.kind == "image_folder" and members is not None:
            yield from pools.read_folder(path, source, members, first_line)
        elif cfg.kind == "image_folder":  # a captions file naming the images
            named = cfg.model_copy(update={"url_col": cfg.file_col, "format": "urls"})
            yield from map(pools.named_row, read_rows(path, named, source=source))
        else:
            yield from _read_list(path, cfg, row_groups, first_line)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise InputError(f"input.path: {path}: cannot read ({err})") from None


def _read_list(path: Path, cfg: InputConfig, row_groups: list[int] | None, first_line: int) -> Iterator[RawRow]:
    kind = format_of(path)
    if kind == "parquet":
        yield from _read_parquet(path, cfg, row_groups, first_line)
    elif kind == "jsonl":
        yield from _read_jsonl(path, cfg)
    else:
        yield from _read_delimited(path, cfg, "\t" if kind == "tsv" else ",")


def _read_parquet(path: Path, cfg: InputConfig, row_groups: list[int] | None, line: int) -> Iterator[RawRow]:
    pf = pools.open_parquet(path)
    names = pf.schema_arrow.names
    _require_columns(path, names, cfg)
    for batch in pf.iter_batches(batch_size=65536, columns=[cfg.url_col, cfg.caption_col], row_groups=row_groups):
        for url, caption in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            line += 1
            yield RawRow(str(path), line, _decoded(url), _decoded(caption))


def _decoded(value: object) -> object:
    """A parquet `binary` value as text, as CSV and JSONL bytes are read (invalid UTF-8 then fails
    as not_utf8); other values as they are."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _read_jsonl(path: Path, cfg: InputConfig) -> Iterator[RawRow]:
    """The rows of a JSONL file; when none of its first objects has the url or caption key, exit 2
    naming the key and the keys found, as a CSV without the column does (not a file of failed rows)."""
    for row, _ in checked_jsonl(path, cfg, lambda keys: {cfg.url_col, cfg.caption_col} <= keys,
                                lambda keys: _require_keys(path, keys, cfg)):
        yield row


def checked_jsonl(path: Path, cfg: InputConfig, found: Callable[[set[str]], bool],
                  require: Callable[[set[str]], None]) -> Iterator[tuple[RawRow, dict | None]]:
    """`jsonl_rows`, passed on once the file's keys are checked: the first rows are held until the
    keys seen `found` what the format needs, or KEY_CHECK_OBJECTS objects have come; then
    `require(keys seen)` raises where the file is of another kind. The rest go straight through."""
    held: list[tuple[RawRow, dict | None]] = []
    keys: set[str] = set()
    objects, checked = 0, False
    for row, obj in jsonl_rows(path, cfg):
        if checked:
            yield row, obj
            continue
        held.append((row, obj))
        if obj is not None:
            objects += 1
            keys.update(obj)
        if objects >= KEY_CHECK_OBJECTS or found(keys):
            require(keys)
            checked = True
            yield from held
            held = []
    if objects and not checked:
        require(keys)
    yield from held


KEY_CHECK_OBJECTS = 100  # a JSONL's first objects, of which one at least must hold each key


def _require_keys(path: Path, keys: set[str], cfg: InputConfig) -> None:
    for key, col in (("input.url_col", cfg.url_col), ("input.caption_col", cfg.caption_col)):
        if col not in keys:
            found = ", ".join(sorted(keys)[:20]) or "none"
            raise InputError(f"{key}: key {col!r} in none of the first objects of {path} (keys found: {found})")


def jsonl_rows(path: Path, cfg: InputConfig) -> Iterator[tuple[RawRow, dict | None]]:
    """Each line's row, with its object when the line is one."""
    with _open_binary(path) as f:
        for line_no, raw in enumerate(_bounded_lines(f, MAX_FIELD_BYTES), start=1):
            if raw is None:
                detail = f"line {line_no}: longer than {MAX_FIELD_BYTES:,} bytes (not read)"
                yield RawRow(str(path), line_no, None, None, ("malformed_row", detail)), None
                continue
            if line_no == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark, as Windows tools write
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield RawRow(str(path), line_no, None, None, ("not_utf8", f"line {line_no}: {err}")), None
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                yield RawRow(str(path), line_no, None, None, ("malformed_row", f"line {line_no}: not JSON ({err.msg})")), None
                continue
            except RecursionError:
                yield RawRow(str(path), line_no, None, None, ("malformed_row", f"line {line_no}: JSON nested too deeply")), None
                continue
            if not isinstance(obj, dict):
                kind = _JSON_KINDS.get(type(obj), type(obj).__name__)
                yield RawRow(str(path), line_no, None, None, ("malformed_row", f"line {line_no}: a JSON {kind}, not an object")), None
                continue
            yield RawRow(str(path), line_no, obj.get(cfg.url_col), obj.get(cfg.caption_col)), obj


_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _bounded_readline(readline: Callable, limit: int, ends: bytes | str | tuple[str, ...]):
    """The next line from `readline` (empty at the end), or None for a line longer than `limit`,
    which is read and dropped a chunk at a time: one hostile line must not take the driver's memory."""
    line = readline(limit + 1)
    if len(line) <= limit or line.endswith(ends):
        return line
    while (rest := readline(1 << 20)) and not rest.endswith(ends):
        pass
    return None


def _bounded_lines(f: io.BufferedIOBase, limit: int) -> Iterator[bytes | None]:
    """The lines of a binary file; None for a line longer than `limit` bytes."""
    while (line := _bounded_readline(f.readline, limit, b"\n")) != b"":
        yield line


class _LineTooLong(Exception):
    """A physical line over the limit: skipped unread, and failed in its place."""


_TOO_LONG = object()  # stands in for such a line among the lines taken back


class _PhysicalLines:
    """The physical lines a csv reader pulls, each at most `limit` characters (a longer one raises
    _LineTooLong and is skipped without being held): remembers those of the record being read,
    and takes lines back to be read again."""

    def __init__(self, text: io.TextIOBase, limit: int) -> None:
        self._text = text
        self._limit = limit
        self._back: deque[str | object] = deque()
        self.consumed = 0  # lines handed out and not taken back
        self.record: list[str] = []

    def __iter__(self) -> _PhysicalLines:
        return self

    def __next__(self) -> str:
        line = self._back.popleft() if self._back else self._read()
        self.consumed += 1
        if line is _TOO_LONG:
            raise _LineTooLong
        self.record.append(line)
        return line

    def _read(self) -> str | object:
        line = _bounded_readline(self._text.readline, self._limit, ("\n", "\r"))
        if line == "":
            raise StopIteration
        return _TOO_LONG if line is None else line

    def next_record(self) -> int:
        """Start remembering a new record; return the line number it starts on."""
        self.record = []
        return self.consumed + 1

    def take_back(self, lines: list[str | object]) -> None:
        self._back.extendleft(reversed(lines))
        self.consumed -= len(lines)


def _starts_a_row(line: str, delimiter: str, width: int, url_index: int) -> bool:
    """Whether a physical line, read on its own, is a whole row with a URL where the URL goes."""
    try:
        fields = next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter), [])
    except csv.Error:
        return False
    return len(fields) == width and fields[url_index].strip().lower().startswith(("http://", "https://"))


def _read_delimited(path: Path, cfg: InputConfig, delimiter: str) -> Iterator[RawRow]:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with _open_binary(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
        lines = _PhysicalLines(text, MAX_FIELD_BYTES)
        reader = csv.reader(lines, delimiter=delimiter, quoting=quoting, strict=False)
        try:
            header = next(reader)
        except StopIteration:
            return
        except (csv.Error, _LineTooLong) as err:
            raise InputError(f"input.path: {path}: line 1: unreadable header ({err or 'too long'})") from None
        header = [h.strip().lstrip("\ufeff") for h in header]
        _require_columns(path, header, cfg)
        iu, ic, width = header.index(cfg.url_col), header.index(cfg.caption_col), len(header)
        too_long = f"longer than {MAX_FIELD_BYTES:,} characters (not read)"
        while True:
            line = lines.next_record()
            try:
                fields, error = next(reader), None
            except StopIteration:
                return
            except csv.Error as err:
                fields, error = None, err
            except _LineTooLong:
                if lines.record:  # a record quoted over lines ran into it: read the lines between again
                    lines.take_back([*lines.record[1:], _TOO_LONG])
                    detail = f"line {line}: a quoted field opens here and runs into a line {too_long}"
                else:
                    detail = f"line {line}: {too_long}"
                yield RawRow(str(path), line, None, None, ("malformed_row", detail))
                continue
            swallowed = lines.record[1:]
            # a field quoted over several lines closes on the record's last line: with no quote
            # there, the file ended inside it
            unclosed = bool(swallowed) and '"' not in swallowed[-1]
            row_like = any(_starts_a_row(s, delimiter, width, iu) for s in swallowed)
            if swallowed and (error or unclosed or row_like):
                # a quote opened on this line runs over the lines after it (never closed, or closed by
                # a later row's quote): this line fails, and the lines after it are read again as rows
                lines.take_back(swallowed)
                why = ("never closes" if unclosed else f"runs into line {line + 1}, which is a row of its own"
                       if row_like else f"does not end ({error})")
                yield RawRow(str(path), line, None, None, ("malformed_row", f"line {line}: a quoted field opens here and {why}"))
                continue
            if error is not None:
                yield RawRow(str(path), line, None, None, ("malformed_row", f"line {line}: {error}"))
                continue
            if not fields:
                continue
            if len(fields) != width:
                detail = f"line {line}: expected {width} fields, got {len(fields)}"
                yield RawRow(str(path), line, None, None, ("malformed_row", detail))
                continue
            yield RawRow(str(path), line, fields[iu], fields[ic])


def _require_columns(path: Path, names: list[str], cfg: InputConfig) -> None:
    for key, col in (("input.url_col", cfg.url_col), ("input.caption_col", cfg.caption_col)):
        if col not in names:
            found = ", ".join(names[:20]) or "none"
            raise InputError(f"{key}: column {col!r} not in {path} (columns found: {found})")
