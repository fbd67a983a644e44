"""Rows as ingest numbers them: the uid, the checks every row must pass, and shards of rows.

Every input row gets a shard row: usable rows with status `kept`, unusable ones `failed` with a
reason. Nothing is skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from mmcurate.schemas import columns as C

ALLOWED_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class RawRow:
    """One input row as read: its position, values, and a read problem if there was one."""

    source: str
    line: int
    url: object
    caption: object
    problem: tuple[str, str] | None = None
    pool: dict | None = None  # a pool's row: its origin and the image's place (columns.POOL_INGEST_SCHEMA)
    document: dict | None = None  # a document's image: its document's number and id, its position (C.DOCUMENT_COLUMNS)


def uid_of(url: object, caption: object) -> str:
    """The stable id of an input row: a hash of (url, caption)."""
    text = json.dumps([url, caption], ensure_ascii=True, default=repr)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:32]


_DROPPED = dict.fromkeys(map(ord, "\t\r\n"))
_AUTHORITY = re.compile(r"^([^/?#]*//)([^/?#]*)@")  # scheme://user:password@ (urlsplit's split: the last @)


def masked_url(url: object) -> object:
    """`url` as it may be stored and shown: a password masked (`user:***@`), and a user given alone
    too (`***@`: tokens are passed so, `https://TOKEN@host`); any other value as it is."""
    if not isinstance(url, str):
        return url
    read = url.translate(_DROPPED)  # as urlsplit reads it: tabs and line breaks anywhere are dropped
    if (found := _AUTHORITY.match(read)) is None:
        return url
    user, colon, _secret = found.group(2).partition(":")
    shown = f"{user}:***" if colon else "***"
    return f"{found.group(1)}{shown}@{read[found.end():]}"


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


MAX_CAPTION_CHARS = 16_384
MAX_URL_CHARS = 8_192  # what common web servers accept in a request line; signed URLs fit
_BAD_CAPTION_CHARS = frozenset(chr(c) for c in range(32) if chr(c) not in "\t\n\r") | {"\x7f"}


def check_row(url: object, caption: object, max_caption_chars: int = MAX_CAPTION_CHARS,
              max_url_chars: int = MAX_URL_CHARS) -> tuple[str, str] | None:
    """Why a row cannot be used (reason, detail), or None when it can."""
    if url is None or (isinstance(url, str) and not url.strip()):
        return "missing_url", "the url is empty"
    if not isinstance(url, str):
        return "bad_url", f"the url is a {type(url).__name__}, not text"
    text = url.strip()
    if len(text) > max_url_chars:
        return "url_too_long", f"the url has {len(text):,} characters > input.max_url_chars {max_url_chars:,}"
    if any(ord(ch) < 33 or ord(ch) == 127 for ch in text):
        return "bad_url", "the url contains whitespace or control characters"
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as err:
        return "bad_url", f"unparsable url: {err}"
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        shown = scheme or "none"
        return "unsupported_scheme", f"scheme {shown!r} is not http or https"
    if not parts.hostname:
        return "bad_url", "the url has no host"
    if parts.username is not None or parts.password is not None:
        return "credentials_in_url", "the url carries credentials (user:password@): never sent, stored masked"
    if _has_surrogates(text):
        return "not_utf8", "the url holds characters that are not valid UTF-8"
    return check_caption(caption, max_caption_chars)


def check_caption(caption: object, max_caption_chars: int = MAX_CAPTION_CHARS) -> tuple[str, str] | None:
    """Why a caption cannot be used (reason, detail), or None when it can."""
    if caption is None:
        return "missing_caption", "the caption is empty (null)"
    if not isinstance(caption, str):
        return "caption_not_text", f"the caption is a {type(caption).__name__}, not text"
    if _has_surrogates(caption):
        return "not_utf8", "the caption holds characters that are not valid UTF-8"
    if not caption.strip():
        return "missing_caption", "the caption is empty"
    if len(caption) > max_caption_chars:
        return "caption_too_long", f"the caption has {len(caption):,} characters > input.max_caption_chars {max_caption_chars:,}"
    bad = next((ch for ch in caption if ch in _BAD_CAPTION_CHARS), None)
    if bad is not None:
        return "bad_caption", f"the caption holds the control character U+{ord(bad):04X} (NUL and friends break text tools)"
    return None


def _text(value: object) -> str | None:
    """A value as storable text: None stays None, non-text becomes JSON, bad UTF-8 is replaced."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return text.encode("utf-8", "replace").decode("utf-8")


def _where(line: int, detail: str) -> str:
    return detail if detail.startswith("line ") else f"line {line}: {detail}"


@dataclass
class ShardBuffer:
    """Collects ingest rows and writes a shard every `shard_size` rows."""

    shard_size: int
    write: Callable[[int, pa.Table], None]
    max_caption_chars: int = MAX_CAPTION_CHARS
    max_url_chars: int = MAX_URL_CHARS
    shard: int = 0
    rows: int = 0
    failed: int = 0
    source: str | None = None  # the ledger's source for every row, when it differs from the path read
    pool: bool = False  # a pool's rows: no URL to check (it is never fetched), their origin beside
    documents: bool = False  # a document's image rows: where in which document each stands, beside

    def __post_init__(self) -> None:
        self.schema = C.ingest_schema(self.pool, self.documents)
        self._cols: dict[str, list] = {f.name: [] for f in self.schema}

    def add(self, raw: RawRow) -> None:
        """Validate one input row and buffer it; flush when the shard is full."""
        if self.pool:
            problem = raw.problem or check_caption(raw.caption, self.max_caption_chars)
        else:
            problem = raw.problem or check_row(raw.url, raw.caption, self.max_caption_chars, self.max_url_chars)
        key = raw.pool[C.SOURCE_KEY] if self.pool else None
        url = masked_url(raw.url)  # no credentials at rest: the uid (a hash one could guess at) is of this too
        if self.pool and (url is not None or key is not None):  # the pair's uid, as a list of it would give
            uid = uid_of(url if url is not None else key, raw.caption)
        elif raw.problem is not None and raw.document is not None:  # one of a document's images: its place
            uid = uid_of(f"{raw.source}:{raw.line}:{raw.document[C.POSITION]}", None)
        elif raw.problem is not None or self.pool:  # no values could be read: the uid names the place instead
            uid = uid_of(f"{raw.source}:{raw.line}", None)
        else:
            uid = uid_of(url, raw.caption)
        values = {
            C.UID: uid,
            C.ROW: self.rows,
            C.SOURCE: raw.source if self.source is None else self.source,
            C.SOURCE_LINE: raw.line,
            C.URL: _text(url),
            C.CAPTION: _text(raw.caption),
            C.STATUS: C.FAILED if problem else C.KEPT,
            C.REASON: problem[0] if problem else None,
            C.DETAIL: _where(raw.line, problem[1]) if problem else None,
        }
        if self.pool:  # names from a tar or a folder may hold any bytes: stored as text, as captions are
            values.update({k: _text(v) if isinstance(v, str) else v for k, v in raw.pool.items()})
        if self.documents:
            values.update(raw.document)
        for name, value in values.items():
            self._cols[name].append(value)
        self.rows += 1
        self.failed += bool(problem)
        if len(self._cols[C.UID]) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as the next shard."""
        if not self._cols[C.UID]:
            return
        self.write(self.shard, pa.table(self._cols, schema=self.schema))
        self.shard += 1
        self._cols = {name: [] for name in self._cols}
