"""Interleaved image-text documents (input.format mmc4, obelics): each document read into one row
of the documents table and one image row per image, so that every image stage runs on its images
as on a URL list's.

MMC4 (JSONL): `url`, `text_list`, `image_info: [{raw_url, matched_text_index, matched_sim, ...}]`;
an image's position is its index in image_info, its caption the text it was matched to. OBELICS
(parquet or JSONL): aligned `images` and `texts` lists, an image URL or a text at each position
(the other null), and `general_metadata` (a JSON object, or a string of one) with the document's
`url`; an image's position is its index in those lists, its caption the nearest text (the one
after it, else the one before it).

A document that cannot be read (not JSON, lists of unequal length, neither image nor text) is a
failed row of the documents table with its reason, and has no image rows; a document with no
image is still a row of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mmcurate.ingest import pools
from mmcurate.ingest.readers import checked_jsonl
from mmcurate.ingest.rows import RawRow
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import InputConfig
from mmcurate.schemas.errors import InputError

KEYS = {"mmc4": ("text_list", "image_info"), "obelics": ("images", "texts")}  # what each format's documents hold
_OPTIONAL = ("url", "general_metadata")


@dataclass
class Document:
    """One input document: its row of the documents table (all but its first image's row number)
    and its image rows, in position order."""

    values: dict
    images: list[RawRow] = field(default_factory=list)


def read_documents(path: Path, cfg: InputConfig, row_groups: list[int] | None = None, first_line: int = 0,
                   source: str | None = None) -> Iterator[Document]:
    """Every document of one input file (of a parquet file, optionally only some row groups), numbered
    from 0 in `C.DOCUMENT`; malformed ones included, failed."""
    source = str(path) if source is None else source
    parse = _mmc4 if cfg.kind == "mmc4" else _obelics
    for number, (line, obj, problem) in enumerate(_objects(path, cfg, row_groups, first_line)):
        if problem is None:
            try:
                yield _document(parse(obj), obj, cfg, source, line, number)
                continue
            except _Malformed as err:
                problem = err.args[0], f"line {line}: {err.args[1]}"
        url = obj.get("url") if obj is not None else None
        yield Document(_failed(source, line, number, problem, _clean(url) if isinstance(url, str) else None))


class _Malformed(Exception):
    """A document that cannot be read: (reason, detail)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)


def _objects(path: Path, cfg: InputConfig, row_groups: list[int] | None, line: int
             ) -> Iterator[tuple[int, dict | None, tuple[str, str] | None]]:
    """(line, object, problem) of each document; exit 2 when none of the first objects (no column of
    a parquet file) holds the format's keys: a file of another format, not a file of failed documents."""
    keys = KEYS[cfg.kind]
    wanted = [*keys, *_OPTIONAL, *((cfg.id_col,) if cfg.id_col else ())]
    if path.suffix.lower() == ".parquet":
        pf = pools.open_parquet(path)
        names = pf.schema_arrow.names
        _require(path, cfg, set(names))
        for batch in pf.iter_batches(batch_size=1024, columns=[c for c in dict.fromkeys(wanted) if c in names],
                                     row_groups=row_groups):
            for record in batch.to_pylist():
                line += 1
                yield line, record, None
        return
    for row, obj in checked_jsonl(path, cfg, lambda seen: any(k in seen for k in keys),
                                  lambda seen: _require(path, cfg, seen)):
        yield row.line, obj, row.problem


def _require(path: Path, cfg: InputConfig, found: set[str]) -> None:
    keys = KEYS[cfg.kind]
    if not any(k in found for k in keys):
        shown = ", ".join(sorted(found)[:20]) or "none"
        raise InputError(f"input.format: {cfg.kind} documents hold {' and '.join(keys)}; none of the first documents "
                         f"of {path} does (keys found: {shown})")


def _list(obj: dict, key: str) -> list:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Malformed("malformed_document", f"{key} is a {type(value).__name__}, not a list")
    return value


def _mmc4(obj: dict) -> dict:
    """texts with positions, and per image: position, url, text position, similarity, problem."""
    texts, infos = _list(obj, "text_list"), _list(obj, "image_info")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise _Malformed("malformed_document", f"text_list[{i}] is a {type(text).__name__}, not text")
    images = []
    for k, info in enumerate(infos):
        if not isinstance(info, dict):
            images.append((k, None, None, None, ("malformed_row", f"image_info[{k}] is not an object")))
            continue
        at, sim = info.get("matched_text_index"), info.get("matched_sim")
        sim = float(sim) if isinstance(sim, int | float) and not isinstance(sim, bool) else None
        if isinstance(at, bool) or not isinstance(at, int) or not 0 <= at < len(texts):
            problem = ("missing_caption", f"image_info[{k}]: matched_text_index {at!r} names no text of text_list "
                                          f"({len(texts)} texts)")
            images.append((k, info.get("raw_url"), None, sim, problem))
        else:
            images.append((k, info.get("raw_url"), at, sim, None))
    return {"texts": list(enumerate(texts)), "images": images, "url": obj.get("url")}


def _obelics(obj: dict) -> dict:
    images, texts = _list(obj, "images"), _list(obj, "texts")
    if len(images) != len(texts):
        raise _Malformed("malformed_document", f"images has {len(images)} entries and texts {len(texts)}: they must align")
    placed = []
    for i, (image, text) in enumerate(zip(images, texts)):
        if image is not None and text is not None:
            raise _Malformed("malformed_document", f"position {i} holds both an image and a text")
        if text is not None and not isinstance(text, str):
            raise _Malformed("malformed_document", f"texts[{i}] is a {type(text).__name__}, not text")
        placed.append((i, text))
    at = [i for i, text in placed if text is not None]
    found = []
    for i, image in enumerate(images):
        if image is None:
            continue
        after = next((p for p in at if p > i), None)  # the paragraph after the image, else the one before
        before = next((p for p in reversed(at) if p < i), None)
        text = after if after is not None else before
        problem = None if text is not None else ("missing_caption", f"image at position {i}: the document has no text")
        found.append((i, image, text, None, problem))
    meta = obj.get("general_metadata")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except (ValueError, RecursionError):
            meta = None
    url = meta.get("url") if isinstance(meta, dict) else None
    return {"texts": [(i, t) for i, t in placed if t is not None], "images": found, "url": url or obj.get("url")}


def _document(parsed: dict, obj: dict, cfg: InputConfig, source: str, line: int, number: int) -> Document:
    texts, images, url = parsed["texts"], parsed["images"], parsed["url"]
    url = url if isinstance(url, str) and url else None
    if not texts and not images:
        raise _Malformed("empty_document", "the document holds neither an image nor a text")
    given = obj.get(cfg.id_col) if cfg.id_col else None
    if isinstance(given, str | int) and not isinstance(given, bool) and str(given):
        doc_id = str(given)
    else:  # a hash of the document's URL and content
        content = [url, texts, [(p, u) for p, u, *_ in images]]
        doc_id = hashlib.sha256(json.dumps(content, ensure_ascii=True, default=repr).encode()).hexdigest()[:32]
    by_position = dict(texts)
    doc_id, url = _clean(doc_id), _clean(url)
    values = {
        C.DOCUMENT: number, C.DOCUMENT_ID: doc_id, C.SOURCE: source, C.SOURCE_LINE: line, C.URL: url,
        C.STATUS: C.KEPT, C.REASON: None, C.DETAIL: None,
        C.IMAGES_IN: len(images), C.WORDS: sum(len(t.split()) for _, t in texts),
        C.TEXTS: [_clean(t) for _, t in texts], C.TEXT_POSITIONS: [p for p, _ in texts],
        C.IMAGE_POSITIONS: [p for p, *_ in images], C.IMAGE_TEXTS: [t for _, _, t, _, _ in images],
        C.IMAGE_SIMILARITY: [s for *_, s, _ in images] if cfg.kind == "mmc4" else None,
    }
    rows = [RawRow(source, line, image_url, by_position.get(text), problem,
                   document={C.DOCUMENT: number, C.DOCUMENT_ID: doc_id, C.POSITION: position})
            for position, image_url, text, _, problem in images]
    return Document(values, rows)


def _clean(text: str | None) -> str | None:
    """Text as it may be stored: characters that are not valid UTF-8 (JSON's lone surrogates) replaced."""
    return None if text is None else text.encode("utf-8", "replace").decode("utf-8")


def _failed(source: str, line: int, number: int, problem: tuple[str, str], url: str | None) -> dict:
    detail = problem[1] if problem[1].startswith("line ") else f"line {line}: {problem[1]}"
    return {C.DOCUMENT: number, C.DOCUMENT_ID: hashlib.sha256(f"{source}:{line}".encode()).hexdigest()[:32],
            C.SOURCE: source, C.SOURCE_LINE: line, C.URL: url, C.STATUS: C.FAILED, C.REASON: problem[0],
            C.DETAIL: detail, C.IMAGES_IN: 0, C.WORDS: 0, C.TEXTS: [], C.TEXT_POSITIONS: [], C.IMAGE_POSITIONS: [],
            C.IMAGE_TEXTS: [], C.IMAGE_SIMILARITY: None}
