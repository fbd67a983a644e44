"""A document's verdict from its images' ledger rows and what the paragraph rules and the image-text
assignment left of it (the `documents` section's rules, in the README's order). Pure: the documents
step (`jobs/documents.py`) reads the rows and writes what this decides."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from mmcurate.engine.rundir import INGEST
from mmcurate.filters.paragraphs import Outcome, describe
from mmcurate.schemas import columns as C
from mmcurate.schemas.documents_section import DocumentsConfig

STAGE = "documents"  # the ledger's stage of a document a document rule dropped
UNASSIGNED = "low_text_similarity"  # an image the assignment left without a text (documents.assignment)


@dataclass
class Verdict:
    status: str
    stage: str | None
    reason: str | None
    detail: str | None
    images_kept: int
    words_kept: int


def _removed_images(removed: list[tuple[int, str]], images: int) -> str:
    why = Counter(r for _, r in removed)
    return f"{len(removed)} of {images} images removed ({', '.join(f'{n} {r}' for r, n in why.most_common())})"


def verdict(doc: dict, images: list[tuple[int, str, str | None]], texts: Outcome, cfg: DocumentsConfig) -> Verdict:
    """`doc`: its documents-table row (status, reason, detail, texts); `images`: (position, status,
    reason) of each of its images after the image stages and the assignment (an image the assignment
    left out has status dropped and reason `UNASSIGNED`); `texts`: the paragraph rules' outcome.

    A document ingest could not read stays failed. One whose image was dropped as nsfw_image is
    dropped whole (`documents.nsfw_drops_document`); any other image that failed or was dropped is
    removed from it, its text kept; then the image and word counts of what is left decide
    (min_images, max_images, min_words, max_words)."""
    if doc[C.STATUS] == C.FAILED:
        return Verdict(C.FAILED, INGEST, doc[C.REASON], doc[C.DETAIL], 0, 0)
    kept = sum(s == C.KEPT for _, s, _ in images)
    words = sum(len(t.split()) for t in texts.texts)
    removed = [(p, r or s) for p, s, r in images if s != C.KEPT]

    def dropped(reason: str, detail: str) -> Verdict:
        return Verdict(C.DROPPED, STAGE, reason, detail, kept, words)

    nsfw = [p for p, r in removed if r == "nsfw_image"]
    if cfg.nsfw_drops_document and nsfw:
        shown = ", ".join(map(str, nsfw[:5])) + (" ..." if len(nsfw) > 5 else "")
        return dropped("nsfw_document", f"image at position {shown} dropped as nsfw_image: the document goes whole")
    lost = _removed_images(removed, len(images)) if removed else None
    if kept < cfg.min_images:
        return dropped("too_few_images", f"{kept} images kept < documents.min_images {cfg.min_images}"
                       + (f"; {lost}" if lost else ""))
    if cfg.max_images is not None and kept > cfg.max_images:
        return dropped("too_many_images", f"{kept} images kept > documents.max_images {cfg.max_images}")
    said = describe(texts, len(doc[C.TEXTS] or []))
    if words < cfg.min_words:
        return dropped("too_few_words", f"{words} words < documents.min_words {cfg.min_words}"
                       + (f"; {said}" if said else ""))
    if cfg.max_words is not None and words > cfg.max_words:
        return dropped("too_many_words", f"{words} words > documents.max_words {cfg.max_words}")
    return Verdict(C.KEPT, None, None, "; ".join(x for x in (lost, said) if x) or None, kept, words)
