"""Images placed among a document's texts as MMC4 placed them: a one-to-one assignment that
maximises the total image-text similarity (a linear assignment), then a floor on each pair.

MMC4 (`scripts/compute_assignments.py`) solves the assignment on the CLIP ViT-L/14
image-by-sentence similarity matrix of each document and stores, per image, the sentence it
took (`matched_text_index`) and the similarity (`matched_sim`). It sets no floor itself; its
consumers do (OpenFlamingo drops images whose `matched_sim` is under
`--mmc4_textsim_threshold`, 0.24 in its training scripts). `assign` does both: MMC4's
matching, then every pair under `min_similarity` unassigned, so that with
`min_similarity=-inf` it reproduces MMC4's `matched_text_index`.

The targets are the document's texts as given: MMC4's `text_list` is already sentences, and an
OBELICS paragraph is one target (CLIP's tokenizer reads its first context-length tokens), so an
index here is an index into the document's own text list.

Memory: O(images x sentences) per document.
"""

from __future__ import annotations

import numpy as np

UNASSIGNED = -1


def assign(similarity: np.ndarray, min_similarity: float, *,
           share_sentences: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(sentence index per image, -1 where unassigned; its similarity, nan where unassigned).

    `similarity` is images x sentences. Each sentence takes at most one image and each image at
    most one sentence, the pairs maximising the total similarity; with more images than
    sentences the images left over stay unassigned, unless `share_sentences` gives each its best
    sentence, as MMC4 did. A pair under `min_similarity` is then unassigned. An image whose row
    is all NaN (no embedding) takes part in nothing; a NaN entry is a pair that cannot be made.
    The same matrix always gives the same answer; where a repeated image or text makes matchings
    tie exactly, earlier images take earlier sentences (`_in_order`).
    """
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be images x sentences, got shape {sim.shape}")
    n_images, n_sentences = sim.shape
    index = np.full(n_images, UNASSIGNED, np.int64)
    if n_images and n_sentences:
        ok = np.isfinite(sim)
        rows = np.flatnonzero(ok.any(axis=1))
        if len(rows):
            index[rows] = _match(sim[rows], ok[rows])
        if share_sentences:
            left = np.flatnonzero((index == UNASSIGNED) & ok.any(axis=1))
            index[left] = np.argmax(np.where(ok[left], sim[left], -np.inf), axis=1)
    took = index != UNASSIGNED
    score = np.full(n_images, np.nan, np.float64)
    score[took] = sim[np.flatnonzero(took), index[took]]
    low = took & ~(score >= min_similarity)
    index[low], score[low] = UNASSIGNED, np.nan
    return index, score.astype(np.float32)


def _match(sim: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """The linear assignment on rows that have at least one possible pair; -1 for rows left out."""
    from scipy.optimize import linear_sum_assignment

    # an impossible pair costs more than any set of possible pairs can gain, so the solver makes
    # as few of them as it can (and they are dropped below), without inf making it infeasible
    finite = sim[ok]
    penalty = (np.abs(finite).max() * 2 + 1) * min(sim.shape) + 1
    cost = np.where(ok, -sim, penalty)
    rows, cols = linear_sum_assignment(cost)
    index = np.full(sim.shape[0], UNASSIGNED, np.int64)
    index[rows] = cols
    index[(index != UNASSIGNED) & ~ok[np.arange(len(index)), np.maximum(index, 0)]] = UNASSIGNED
    return _in_order(np.where(ok, sim + 0.0, np.nan), index)  # + 0.0: -0.0 as 0.0


def _in_order(sim: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Exact ties made deterministic in document order: of images with identical rows (a
    repeated image), the earlier take the earlier of their sentences and the later stay
    unassigned; of identical sentences (a repeated text), the earlier are taken, by the earlier
    images. Neither changes the total. O(images x sentences) per round, a few rounds."""
    rows = _groups(sim)
    cols = _groups(sim.T)
    for _ in range(8):  # the two rules rarely disturb each other; a fixed number of rounds keeps it bounded
        before = index.copy()
        for g in rows:
            taken = np.sort(index[g][index[g] != UNASSIGNED])
            index[g] = np.concatenate([taken, np.full(len(g) - len(taken), UNASSIGNED, np.int64)])
        for g in cols:
            images = np.flatnonzero(np.isin(index, g))
            index[images] = g[: len(images)]
        if np.array_equal(before, index):
            break
    return index


def _groups(matrix: np.ndarray) -> list[np.ndarray]:
    """Indices of identical rows (NaN equal to NaN), in order, for each group of two or more."""
    seen: dict[bytes, list[int]] = {}
    for i, row in enumerate(matrix):
        seen.setdefault(np.ascontiguousarray(row).tobytes(), []).append(i)
    return [np.array(g, np.int64) for g in seen.values() if len(g) > 1]
