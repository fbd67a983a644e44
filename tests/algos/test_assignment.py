"""The linear assignment of images to texts: hand-made matrices, MMC4's own example, brute force."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest

from mmcurate.algos.assignment import assign

NO_FLOOR = -np.inf


def test_the_best_total_not_the_greedy_choice():
    # greedy gives image 0 sentence 0 (0.9) and image 1 sentence 1 (0.1): 1.0 in all; 0.8 + 0.85 is more
    index, sim = assign(np.array([[0.9, 0.8], [0.85, 0.1]]), NO_FLOOR)
    assert index.tolist() == [1, 0]
    np.testing.assert_allclose(sim, [0.8, 0.85], rtol=1e-6)
    assert index.dtype == np.int64 and sim.dtype == np.float32


def test_mmc4_readme_example_is_reproduced():
    # the example document of allenai/mmc4's README: matched_text_index 2 and 1, matched_sim as published
    sim = np.array([[0.24363446235656738, 0.31758785247802734, 0.27694183588027954],
                    [0.2233106791973114, 0.3234919607639313, 0.26118797063827515]])
    index, score = assign(sim, NO_FLOOR)
    assert index.tolist() == [2, 1]
    np.testing.assert_allclose(score, [0.27694183588027954, 0.3234919607639313], rtol=1e-6)
    # OpenFlamingo's 0.24 floor on the same document keeps both; 0.3 keeps the second only
    assert assign(sim, 0.24)[0].tolist() == [2, 1]
    assert assign(sim, 0.3)[0].tolist() == [-1, 1]


def test_empty_documents():
    index, sim = assign(np.zeros((0, 3)), 0.0)
    assert index.shape == sim.shape == (0,) and index.dtype == np.int64 and sim.dtype == np.float32
    index, sim = assign(np.zeros((2, 0)), 0.0)
    assert index.tolist() == [-1, -1] and np.isnan(sim).all()
    index, sim = assign(np.zeros((0, 0)), 0.0)
    assert index.shape == (0,)
    with pytest.raises(ValueError, match="images x sentences"):
        assign(np.zeros(3), 0.0)


def test_more_images_than_sentences():
    sim = np.array([[0.9, 0.1], [0.2, 0.7], [0.85, 0.3]])
    index, score = assign(sim, NO_FLOOR)
    assert index.tolist() == [0, 1, -1]  # one to one: image 2 is left over
    assert np.isnan(score[2])
    # MMC4's compute_assignments.py gives a left-over image its best sentence, shared
    index, score = assign(sim, NO_FLOOR, share_sentences=True)
    assert index.tolist() == [0, 1, 0]
    np.testing.assert_allclose(score, [0.9, 0.7, 0.85], rtol=1e-6)
    assert assign(sim, 0.88, share_sentences=True)[0].tolist() == [0, -1, -1]


def test_a_floor_unassigns_weak_pairs_and_keeps_one_at_it():
    sim = np.array([[0.3, 0.1], [0.1, 0.2]])
    assert assign(sim, 0.0)[0].tolist() == [0, 1]
    index, score = assign(sim, 0.25)
    assert index.tolist() == [0, -1] and np.isnan(score[1])
    assert assign(np.array([[0.25]]), 0.25)[0].tolist() == [0]  # at the floor: kept
    assert assign(sim, 0.5)[0].tolist() == [-1, -1]


def test_nan_rows_take_nothing_and_block_nothing():
    # image 0 has no embedding: image 1 still gets the sentence it prefers
    sim = np.array([[np.nan, np.nan], [0.6, 0.2]])
    index, score = assign(sim, NO_FLOOR)
    assert index.tolist() == [-1, 0] and np.isnan(score[0])
    all_nan = np.full((2, 3), np.nan)
    assert assign(all_nan, NO_FLOOR)[0].tolist() == [-1, -1]
    assert assign(all_nan, NO_FLOOR, share_sentences=True)[0].tolist() == [-1, -1]
    # a NaN entry is a pair that cannot be made, even where it leaves an image out
    index, _ = assign(np.array([[np.nan, 0.5], [0.1, 0.9]]), NO_FLOOR)
    assert index.tolist() == [1, 0]  # 0.5 + 0.1 < 0.9, but as many pairs as can be made, as MMC4's full matching


def test_ties_in_document_order():
    # a repeated image: the earlier copy takes the earlier sentence
    assert assign(np.full((3, 3), 0.4), NO_FLOOR)[0].tolist() == [0, 1, 2]
    same = np.array([[0.1, 0.5, 0.3], [0.1, 0.5, 0.3]])
    assert assign(same, NO_FLOOR)[0].tolist() == [1, 2]
    # more copies than sentences: the later copies are left over
    assert assign(np.full((3, 1), 0.4), NO_FLOOR)[0].tolist() == [0, -1, -1]
    assert assign(np.array([[0.2, 0.2], [0.2, 0.2], [0.2, 0.2]]), NO_FLOOR)[0].tolist() == [0, 1, -1]
    # a repeated sentence: the earlier occurrence is taken
    assert assign(np.array([[0.1, 0.7, 0.7]]), NO_FLOOR)[0].tolist() == [1]
    assert assign(np.array([[0.7, 0.1, 0.7], [0.6, 0.9, 0.6]]), NO_FLOOR)[0].tolist() == [0, 1]
    # the same matrix, the same answer, whatever the solver's internals
    rng = np.random.default_rng(0)
    tied = rng.choice([0.1, 0.2, 0.3], size=(6, 5))
    first = assign(tied, NO_FLOOR)[0]
    assert all((assign(tied.copy(), NO_FLOOR)[0] == first).all() for _ in range(3))


def brute_force(sim: np.ndarray) -> float:
    """The best total of a matching of min(n, m) pairs (NaN entries not allowed), by enumeration."""
    n, m = sim.shape
    best = -np.inf
    if n <= m:
        for cols in permutations(range(m), n):
            best = max(best, sum(sim[i, j] for i, j in enumerate(cols)))
    else:
        for rows in permutations(range(n), m):
            best = max(best, sum(sim[i, j] for j, i in enumerate(rows)))
    return best


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    sim = rng.uniform(-0.1, 0.5, (n, m))
    if seed % 4 == 0 and n > 1:  # an image with no embedding
        sim[int(rng.integers(n))] = np.nan
    index, score = assign(sim, NO_FLOOR)
    rows = ~np.isnan(sim).all(axis=1)
    taken = index[index >= 0]
    assert len(set(taken.tolist())) == len(taken) == min(int(rows.sum()), m)  # one to one, as many as can be
    assert (index[~rows] == -1).all()
    total = float(np.nansum(score.astype(np.float64)))
    assert total == pytest.approx(brute_force(sim[rows]), abs=1e-5)
    # a floor only unassigns pairs under it: the others stay as they were
    floor = float(rng.uniform(0.0, 0.4))
    floored, fscore = assign(sim, floor)
    expect = np.where((index >= 0) & (sim[np.arange(n), np.maximum(index, 0)] >= floor), index, -1)
    assert floored.tolist() == expect.tolist()
    assert np.all(np.isnan(fscore) == (floored == -1)) and np.all(fscore[floored >= 0] >= np.float32(floor) - 1e-7)
