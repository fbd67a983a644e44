"""Images placed among a document's texts with the stand-in CLIP: each picture finds the sentence
that names it, and a floor above what the model gives leaves them all unplaced."""

from __future__ import annotations

import numpy as np
import pytest

from mmcurate.demo import shapes
from mmcurate.filters.assignment import match_document, match_documents, similarities
from mmcurate.filters.clip_score import ClipScorer, resolve_weights

PICTURES = [("red", "circle"), ("blue", "square"), ("yellow", "triangle")]
DISTRACTOR = "a drawing of a green cross"  # neither a colour nor a shape of the pictures


class Counting:
    """A scorer that counts the texts it is asked to embed."""

    def __init__(self, scorer: ClipScorer):
        self.scorer, self.calls = scorer, []

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return self.scorer.encode_texts(texts)


@pytest.fixture(scope="module")
def scorer(shapes_clip) -> ClipScorer:
    model_dir, _ = shapes_clip
    return ClipScorer(resolve_weights(f"local-dir:{model_dir}", None), "cpu", batch_size=2, decode="cpu")


@pytest.fixture(scope="module")
def pictures(scorer) -> tuple[list[np.ndarray], list[str], np.ndarray]:
    """The pictures' embeddings as the clip stage stores them (float16), their captions, the pair scores."""
    rng = np.random.default_rng(2024)
    images = [shapes.png(shapes.draw(c, s, rng)) for c, s in PICTURES]
    captions = [f"a photo of a {c} {s}" for c, s in PICTURES]
    scores, embeddings, errors = scorer.score(images, captions)
    assert errors == [None] * len(images)
    return [e.astype(np.float16) for e in embeddings], captions, scores


def test_text_embeddings_agree_with_the_pair_scores(scorer, pictures):
    embeddings, captions, scores = pictures
    texts = scorer.encode_texts(captions + [DISTRACTOR])  # batch_size 2: two batches
    assert texts.shape == (4, scorer.dim) and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    # the clip stage's score of each pair, from the stored float16 embedding and the text's
    np.testing.assert_allclose(np.diag(similarities(embeddings, texts[:3])), scores, atol=2e-3)
    assert scorer.encode_texts([]).shape == (0, scorer.dim)


def test_each_picture_takes_the_sentence_that_names_it(scorer, pictures, shapes_clip):
    embeddings, captions, _ = pictures
    _, card = shapes_clip
    order = [2, 0, 1]
    texts = [captions[order[0]], DISTRACTOR, captions[order[1]], captions[order[2]]]
    index, sim = match_document(embeddings, texts, scorer, card["threshold"])
    assert [texts[i] for i in index] == captions
    assert (sim >= card["threshold"]).all()
    # a floor above anything the model gives: nothing is placed
    index, sim = match_document(embeddings, texts, scorer, 0.999)
    assert index.tolist() == [-1, -1, -1] and np.isnan(sim).all()


def test_documents_together_as_one_by_one(scorer, pictures, shapes_clip):
    embeddings, captions, _ = pictures
    _, card = shapes_clip
    docs = [
        (embeddings, [DISTRACTOR] + captions[::-1]),
        ([None, embeddings[1]], [captions[1], captions[0]]),  # an image with no embedding
        (embeddings[:2], []),  # no texts
        ([], [DISTRACTOR]),  # no images
        (embeddings[::-1], captions + captions),  # every sentence twice: the earlier copies are taken
    ]
    counting = Counting(scorer)
    together = match_documents(docs, counting, card["threshold"])
    assert len(counting.calls) == 1 and len(counting.calls[0]) == len(captions) + 1  # each distinct text once
    alone = [match_document(e, t, scorer, card["threshold"]) for e, t in docs]
    for (i, s), (j, t) in zip(together, alone):
        assert i.tolist() == j.tolist()
        np.testing.assert_allclose(s, t, rtol=1e-5)
    assert together[0][0].tolist() == [3, 2, 1]
    assert together[1][0].tolist() == [-1, 0]
    assert together[2][0].tolist() == [-1, -1] and together[3][0].shape == (0,)
    assert together[4][0].tolist() == [2, 1, 0]
    # groups capped by texts: more calls, the same answers
    counting = Counting(scorer)
    capped = match_documents(docs, counting, card["threshold"], max_texts=4)
    assert len(counting.calls) > 1 and all(len(c) <= 6 for c in counting.calls)
    assert [i.tolist() for i, _ in capped] == [i.tolist() for i, _ in together]
