"""The documents ledger (`documents.parquet`, beside `ledger.parquet`): one row per input document of
an interleaved input (input.format mmc4, obelics), decided from its images' ledger rows by the
`documents` section's rules. Invariant: documents in = kept + dropped + failed.

A document's images are consecutive rows of the ledger, from its `first_row` on (ingest numbers
them so), and the documents table is in document order: both are read once, side by side, a file of
the documents table at a time (memory: one such file's documents and their image rows).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmcurate.engine import atomic
from mmcurate.engine.rundir import INGEST, RunDir
from mmcurate.schemas import columns as C
from mmcurate.schemas.documents_section import DocumentsConfig
from mmcurate.schemas.errors import LedgerError
from mmcurate.storage import paths

STAGE = "documents"  # the ledger's stage of a document a document rule dropped
IMAGE_COLUMNS = [C.ROW, C.DOCUMENT, C.POSITION, C.STATUS, C.REASON]  # what of an image's ledger row decides
_READ = [f.name for f in C.DOCUMENTS_SCHEMA if f.name not in (C.TEXTS, C.TEXT_POSITIONS, C.IMAGE_TEXTS, C.IMAGE_SIMILARITY)]


def decide(documents: pa.Table, images: pa.Table, cfg: DocumentsConfig) -> pa.Table:
    """The documents ledger's rows of `documents` (rows of the documents table), given their images'
    ledger rows (`IMAGE_COLUMNS`, in row order: each document's `images_in` rows after the last's).

    A document ingest could not read stays failed. One whose image was dropped as nsfw_image is
    dropped whole (`documents.nsfw_drops_document`); any other image that failed or was dropped is
    removed from it, its text kept; one left with fewer than `documents.min_images` images, or
    fewer than `documents.min_words` words, is dropped."""
    counts = documents[C.IMAGES_IN].to_numpy(zero_copy_only=False).astype(np.int64)
    if int(counts.sum()) != images.num_rows:
        raise LedgerError(f"documents ledger: {int(counts.sum())} image rows expected, {images.num_rows} found")
    number = documents[C.DOCUMENT].to_numpy(zero_copy_only=False)
    if not np.array_equal(images[C.DOCUMENT].to_numpy(zero_copy_only=False), np.repeat(number, counts)):
        raise LedgerError("documents ledger: image rows do not follow their documents in order")
    status, reason = images[C.STATUS].to_pylist(), images[C.REASON].to_pylist()
    position = images[C.POSITION].to_pylist()
    out = {C.STATUS: [], C.STAGE: [], C.REASON: [], C.DETAIL: [], C.IMAGES_KEPT: []}
    starts = np.concatenate([[0], np.cumsum(counts)])
    for i, doc in enumerate(documents.select([C.STATUS, C.REASON, C.DETAIL, C.WORDS]).to_pylist()):
        lo, hi = int(starts[i]), int(starts[i + 1])
        kept = sum(s == C.KEPT for s in status[lo:hi])
        verdict = _verdict(doc, kept, hi - lo, [(position[j], reason[j]) for j in range(lo, hi) if status[j] != C.KEPT], cfg)
        for name, value in zip((C.STATUS, C.STAGE, C.REASON, C.DETAIL), verdict):
            out[name].append(value)
        out[C.IMAGES_KEPT].append(kept if doc[C.STATUS] != C.FAILED else 0)
    table = pa.table({
        **{f.name: documents[f.name] for f in C.DOCUMENT_IDENTITY},
        **{k: pa.array(v, pa.string()) for k, v in out.items() if k != C.IMAGES_KEPT},
        C.IMAGES_IN: documents[C.IMAGES_IN], C.IMAGES_KEPT: pa.array(out[C.IMAGES_KEPT], pa.int32()),
        C.WORDS: documents[C.WORDS],
    })
    return table.select(C.DOCUMENT_LEDGER_SCHEMA.names).cast(C.DOCUMENT_LEDGER_SCHEMA)


def _verdict(doc: dict, kept: int, images: int, removed: list[tuple[int, str]], cfg: DocumentsConfig
             ) -> tuple[str, str | None, str | None, str | None]:
    """(status, stage, reason, detail) of one document."""
    if doc[C.STATUS] == C.FAILED:
        return C.FAILED, INGEST, doc[C.REASON], doc[C.DETAIL]
    why = Counter(r for _, r in removed)
    lost = f"{len(removed)} of {images} images removed ({', '.join(f'{n} {r}' for r, n in why.most_common())})" if removed else ""
    nsfw = [p for p, r in removed if r == "nsfw_image"]
    if cfg.nsfw_drops_document and nsfw:
        shown = ", ".join(map(str, nsfw[:5])) + (" ..." if len(nsfw) > 5 else "")
        return C.DROPPED, STAGE, "nsfw_document", f"image at position {shown} dropped as nsfw_image: the document goes whole"
    if kept < cfg.min_images:
        return C.DROPPED, STAGE, "too_few_images", f"{kept} images kept < documents.min_images {cfg.min_images}" + (
            f"; {lost}" if lost else "")
    words = doc[C.WORDS] or 0
    if words < cfg.min_words:
        return C.DROPPED, STAGE, "too_few_words", f"{words} words < documents.min_words {cfg.min_words}"
    return C.KEPT, None, None, lost or None


class _LedgerRows:
    """The image ledger's rows (`IMAGE_COLUMNS`), in row order, taken a run of rows at a time."""

    def __init__(self, run_dir: RunDir):
        self._batches = self._read(run_dir)
        self._held: list[pa.RecordBatch] = []
        self._count = 0

    @staticmethod
    def _read(run_dir: RunDir) -> Iterator[pa.RecordBatch]:
        for path in run_dir.ledger_files():
            yield from paths.parquet_file(path).iter_batches(batch_size=65_536, columns=IMAGE_COLUMNS)

    def take(self, n: int) -> pa.Table:
        while self._count < n:
            batch = next(self._batches, None)
            if batch is None:
                raise LedgerError(f"documents ledger: the ledger ends {n - self._count} image rows early")
            self._held.append(batch)
            self._count += batch.num_rows
        table = pa.Table.from_batches(self._held, schema=self._held[0].schema) if self._held else _empty()
        self._held, self._count = list(table.slice(n).to_batches()), self._count - n
        return table.slice(0, n)

    def rest(self) -> int:
        return self._count + sum(b.num_rows for b in self._batches)


def _empty() -> pa.Table:
    types = {C.ROW: pa.int64(), C.DOCUMENT: pa.int64(), C.POSITION: pa.int32()}
    return pa.table({c: pa.array([], types.get(c, pa.string())) for c in IMAGE_COLUMNS})


def build_documents(run_dir: RunDir, cfg: DocumentsConfig, expected: int) -> dict[str, int]:
    """Write documents.parquet from the documents table and the ledger; check documents in = kept +
    dropped + failed (one row per input document, none repeated or missing), else LedgerError."""
    counts = {"documents": 0, **{s: 0 for s in C.STATUSES}}
    rows = _LedgerRows(run_dir)

    def write(tmp) -> None:
        with pq.ParquetWriter(tmp, C.DOCUMENT_LEDGER_SCHEMA, compression="zstd") as writer:
            for path in run_dir.documents_files():
                documents = paths.read_table(path, columns=_READ)
                images = rows.take(int(documents[C.IMAGES_IN].to_numpy(zero_copy_only=False).sum()))
                table = decide(documents, images, cfg)
                numbers = table[C.DOCUMENT].to_numpy(zero_copy_only=False)
                if len(numbers) and not np.array_equal(numbers, np.arange(counts["documents"], counts["documents"] + len(numbers))):
                    raise LedgerError(f"documents ledger: documents are not numbered in order at {path.name}")
                counts["documents"] += table.num_rows
                for s, n in Counter(table[C.STATUS].to_pylist()).items():
                    counts[s] += n
                writer.write_table(table)

    atomic.write_with(run_dir.documents_ledger, write)
    left = rows.rest()
    if left or counts["documents"] != expected or sum(counts[s] for s in C.STATUSES) != expected:
        raise LedgerError(
            f"documents invariant broken: {expected} input documents but the documents ledger has {counts['documents']}, "
            f"kept {counts[C.KEPT]} + dropped {counts[C.DROPPED]} + failed {counts[C.FAILED]}"
            + (f"; {left} image rows of the ledger belong to no document" if left else ""))
    return counts
