"""A document's images placed among its texts by CLIP similarity, as MMC4 placed them. No Ray here.

The image embeddings are the clip stage's (`clip_image_embedding`: normalised, float16), so
only the texts go through the model (`ClipScorer.encode_texts`). The matching itself is
`algos.assignment.assign`: see there for what it does with ties, NaN rows and a floor.

Not a `Filter`: the documents phase calls these functions, and `filters_for` passes over a
module with no `Filter` in it (as `language.py`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from mmcurate.algos.assignment import assign

Match = tuple[np.ndarray, np.ndarray]  # (text index per image, -1 unassigned; its similarity, nan)
Document = tuple[list, list[str]]  # (image embeddings, None where an image has none; texts)
MAX_TEXTS = 16_384  # texts embedded and held at once: 16k x 768 float32 is 48 MiB


class TextEncoder(Protocol):
    def encode_texts(self, texts: list[str]) -> np.ndarray: ...


def similarities(embeddings: list[np.ndarray | None], text_embeddings: np.ndarray) -> np.ndarray:
    """Images x texts cosine similarities, float32; a NaN row for an image with no embedding."""
    out = np.full((len(embeddings), len(text_embeddings)), np.nan, np.float32)
    have = [i for i, e in enumerate(embeddings) if e is not None]
    if have and len(text_embeddings):
        images = np.stack([np.asarray(embeddings[i]) for i in have]).astype(np.float32)
        norms = np.linalg.norm(images, axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):  # a zero vector: a NaN row
            images /= np.where(norms > 0, norms, np.nan)  # stored as float16: unit within ~1e-3, made exact
        out[have] = images @ np.asarray(text_embeddings, np.float32).T
    return out


def match_document(image_embeddings: list[np.ndarray | None], texts: list[str], scorer: TextEncoder,
                   min_similarity: float) -> Match:
    """Each image's text (index, similarity), or (-1, nan) when it takes none, for one document."""
    return match_documents([(image_embeddings, texts)], scorer, min_similarity)[0]


def match_documents(docs: list[Document], scorer: TextEncoder, min_similarity: float,
                    max_texts: int = MAX_TEXTS) -> list[Match]:
    """`match_document` for many documents, their texts embedded together: in groups of documents
    of at most `max_texts` texts (one document may exceed it), each distinct text once per group.

    Memory: O(max_texts x d) for the text embeddings, plus one document's similarity matrix.
    """
    out: list[Match] = []
    group: list[Document] = []
    size = 0
    for doc in docs:
        if group and size + len(doc[1]) > max_texts:
            out += _match_group(group, scorer, min_similarity)
            group, size = [], 0
        group.append(doc)
        size += len(doc[1])
    if group:
        out += _match_group(group, scorer, min_similarity)
    return out


def _match_group(docs: list[Document], scorer: TextEncoder, min_similarity: float) -> list[Match]:
    """Every document of `docs` matched, with one `encode_texts` call for their distinct texts."""
    where: dict[str, int] = {}
    for _, texts in docs:
        for text in texts:
            where.setdefault(text, len(where))
    # web documents repeat boilerplate ("Share this", "Read more"): each distinct text is embedded once
    encoded = scorer.encode_texts(list(where)) if where else np.empty((0, 0), np.float32)
    out = []
    for embeddings, texts in docs:
        rows = encoded[[where[t] for t in texts]] if texts else np.empty((0, encoded.shape[1]), np.float32)
        out.append(assign(similarities(embeddings, rows), min_similarity))
    return out
