"""Questions auditors ask of a documents run's documents.parquet: why was this document dropped, with
its images' verdicts beside it (`audit --explain DOCUMENT_ID`), and which documents a document rule
removed (`audit --reason too_few_words`). An image uid and an image reason keep their answers
(`jobs/audit.py`); the documents answer what the image ledger cannot.

Every read is lazy: documents.parquet filtered by a column or two, the ledger by `document` (its
row groups' statistics skip the others, the documents' images being consecutive rows).
"""

from __future__ import annotations

import polars as pl

from mmcurate.engine.rundir import RunDir
from mmcurate.jobs.audit import check_filters, least_keys, query_ledger, resolve_uid, uid_rows
from mmcurate.jobs.document_report import is_documents_run, scan_documents
from mmcurate.schemas import columns as C
from mmcurate.schemas.errors import ConfigError
from mmcurate.storage import paths

IMAGE_COLUMNS = (C.POSITION, C.UID, C.ROW, C.STATUS, C.STAGE, C.REASON, C.DETAIL, C.URL)
MOST = 5  # document ids an ambiguous start lists


def explain_document(run_dir: RunDir, value: str) -> list[dict] | None:
    """The documents `value` names, each with every column of its documents.parquet row and its
    images' ledger rows (`images`: position, uid, row, status, stage, reason, detail, url), or None
    where it names none and an image uid is meant (a pairs run; an exact uid; a uid's start).

    What `value` may be, in this order: a document_id (several documents may share one: each is
    listed); a document's number (0-based, in input order); an exact image uid; the one document_id
    it begins; else an image uid's start. Naming none of these is an error."""
    if not is_documents_run(run_dir):
        return None
    docs = scan_documents(run_dir)
    found = docs.filter(pl.col(C.DOCUMENT_ID) == value).collect()
    if not found.height and value.isascii() and value.isdigit() and len(value) < 19:  # an int64
        found = docs.filter(pl.col(C.DOCUMENT) == int(value)).collect()
    if not found.height:
        if uid_rows(run_dir, value):
            return None
        ids = (docs.filter(pl.col(C.DOCUMENT_ID).str.starts_with(value)).select(C.DOCUMENT_ID).unique()
               .head(MOST + 1).collect()[C.DOCUMENT_ID].to_list())
        if len(ids) > 1:
            listed = ", ".join(sorted(ids)[:MOST]) + (", ..." if len(ids) > MOST else "")
            raise ConfigError(f"--explain {value}: ambiguous, the start of {'more than ' if len(ids) > MOST else ''}"
                              f"{min(len(ids), MOST)} document ids: {listed}; give more of it")
        if not ids:
            if uid_rows(run_dir, resolve_uid(run_dir, value, "--explain")):
                return None
            raise ConfigError(f"--explain {value}: no document has this id or number, and no ledger row this uid")
        found = docs.filter(pl.col(C.DOCUMENT_ID) == ids[0]).collect()
    found = found.sort(C.DOCUMENT)
    numbers = found[C.DOCUMENT].to_list()
    ledger = paths.scan_parquet(run_dir.ledger_files())
    images = (ledger.filter(pl.col(C.DOCUMENT).is_in(numbers)).select(C.DOCUMENT, *IMAGE_COLUMNS)
              .sort(C.ROW).collect())
    out = []
    for doc in found.to_dicts():
        mine = images.filter(pl.col(C.DOCUMENT) == doc[C.DOCUMENT]).drop(C.DOCUMENT)
        out.append({**doc, "images": mine.to_dicts()})
    return out


def wants_documents(run_dir: RunDir, stage: str | None, reason: str | None) -> bool:
    """Whether `audit --stage/--reason` asks about documents: a documents run whose documents.parquet
    has rows of that stage and reason, where the image stages cannot give it (a document rule's
    reason, the `documents` stage) or no ledger row has it (`malformed_row` of a document). An
    unknown one is refused naming the image reasons and the documents'."""
    if (stage is None and reason is None) or not is_documents_run(run_dir):
        return False
    if _documents(run_dir, stage=stage, reason=reason).head(1).collect().height:
        try:
            check_filters(run_dir, stage, reason)
        except ConfigError:
            return True
        return query_ledger(run_dir, stage=stage, reason=reason, limit=1).height == 0
    try:
        check_filters(run_dir, stage, reason)
    except ConfigError as err:
        column = C.REASON if reason is not None else C.STAGE
        held = scan_documents(run_dir).select(pl.col(column).drop_nulls().unique()).collect()[column].to_list()
        raise ConfigError(f"{err}; documents.parquet's: {', '.join(sorted(held)) or 'none'}") from None
    return False


def _documents(run_dir: RunDir, **filters) -> pl.LazyFrame:
    frame = scan_documents(run_dir)
    for column, value in filters.items():
        if value is not None:
            frame = frame.filter(pl.col(column) == value)
    return frame


def query_documents(run_dir: RunDir, *, stage: str | None = None, reason: str | None = None,
                    status: str | None = None, limit: int | None = 20) -> pl.DataFrame:
    """documents.parquet's rows matching every given filter, in document order (the first `limit`)."""
    frame = _documents(run_dir, stage=stage, reason=reason, status=status)
    return (frame.head(limit) if limit is not None else frame).collect()


def documents_shown(run_dir: RunDir, rows: int, limit: int | None, **filters) -> str | None:
    """A note such as "20 of 81 shown" where `limit` cut the matching documents short, else None."""
    if limit is None or rows < limit:
        return None
    total = _documents(run_dir, **filters).select(pl.len()).collect().item()
    return f"{rows:,} of {total:,} documents shown (--limit 0 for all)" if total > rows else None


def sample_documents(run_dir: RunDir, n: int, seed: int, **filters) -> pl.DataFrame:
    """A reproducible random sample of `n` documents matching `filters` (same run, seed: same
    documents): the `n` smallest seeded keys of their numbers, found batch by batch (memory: n)."""
    wanted = {k: v for k, v in filters.items() if v is not None}
    batches = paths.parquet_file(run_dir.documents_ledger).iter_batches(batch_size=65_536,
                                                                        columns=[C.DOCUMENT, *wanted])
    numbers = least_keys(batches, C.DOCUMENT, n, seed, wanted)
    return scan_documents(run_dir).filter(pl.col(C.DOCUMENT).is_in(numbers.tolist())).sort(C.DOCUMENT).collect()


def documents_of_images(run_dir: RunDir, explained: list[dict]) -> None:
    """To each explained image row of a documents run, its `document`: the document's number, id,
    the image's position in it, and the document's verdict (kept by the image stages, an image may
    still go with its document: nsfw_document, a near-duplicate page)."""
    numbers = [row[C.DOCUMENT] for row in explained if row.get(C.DOCUMENT) is not None]
    if not numbers or not is_documents_run(run_dir):
        return
    found = {d[C.DOCUMENT]: d for d in scan_documents(run_dir).filter(pl.col(C.DOCUMENT).is_in(numbers)).select(
        C.DOCUMENT, C.DOCUMENT_ID, C.STATUS, C.STAGE, C.REASON, C.DETAIL).collect().to_dicts()}
    for row in explained:
        doc = found.get(row.get(C.DOCUMENT))
        if doc is not None:
            row["document"] = {**doc, C.POSITION: row.get(C.POSITION)}
