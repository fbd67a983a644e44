"""The banded pair search finds exactly the pairs brute force finds."""

from __future__ import annotations

import numpy as np
import pytest

from mmcurate.algos import hamming


def planted(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Random 64-bit hashes with planted copies at every distance 0..k+1."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    targets = rng.permutation(n)[: n // 10]
    for t, target in enumerate(targets):
        source = hashes[rng.integers(0, n)]
        flips = rng.choice(64, size=t % (k + 2), replace=False)
        mask = np.uint64(0)
        for bit in flips:
            mask |= np.uint64(1) << np.uint64(int(bit))
        hashes[target] = source ^ mask
    return hashes


@pytest.mark.parametrize("k", [0, 3, 6, 8])
def test_banded_search_equals_brute_force(k):
    hashes = planted(20_000, k, seed=k)
    found = hamming.find_pairs(hashes, k)
    truth = hamming.brute_force_pairs(hashes, k)
    assert len(truth) >= 1000  # planted pairs at every distance up to k
    assert set(map(tuple, found.tolist())) == set(map(tuple, truth.tolist()))
    assert set(np.unique(truth[:, 2]).tolist()) == set(range(k + 1))


def test_identical_hashes_and_components():
    hashes = np.array([5, 5, 5, 7, 2**63, 2**63 + 1], dtype=np.uint64)
    pairs = hamming.find_pairs(hashes, 1)
    assert {(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3), (4, 5)} == {tuple(p[:2]) for p in pairs.tolist()}
    labels = hamming.components(6, pairs)
    assert labels[0] == labels[3] != labels[4] == labels[5]


def test_plan_keeps_every_pair_reachable():
    for n in (10, 10_000, 10_000_000):
        for k in range(11):
            plan = hamming.plan(n, k)
            assert sum(plan.widths) == 64 and len(plan.widths) - plan.need <= k or k == 0
