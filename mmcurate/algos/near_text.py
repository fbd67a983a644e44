"""Near-duplicate texts: Jaccard similarity of word 3-gram sets, found through MinHash bands.

Within a group of documents (those with the same images), each is compared with the ones kept
before it; MinHash (32 permutations, 16 bands of 2) proposes the candidates, so a group of
thousands of documents with different texts costs a few hash lookups each, not a comparison with
every earlier one, and the exact Jaccard similarity confirms each candidate. At a similarity of
0.8 a pair is proposed with probability 1 - (1 - 0.8**2)**16 > 0.9999.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

N = 3  # words per shingle
PERMUTATIONS, BANDS = 32, 16
_SEEDS = np.random.default_rng(20261205).integers(0, 1 << 63, PERMUTATIONS, dtype=np.uint64)


def shingles(text: str) -> frozenset[str]:
    """The word 3-grams of `text`, lowercased (a text of fewer words: its words joined, once)."""
    words = text.lower().split()
    if len(words) < N:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i:i + N]) for i in range(len(words) - N + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a 64-bit value to a well-spread one (uint64 arithmetic wraps)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _minhash(grams: frozenset[str]) -> np.ndarray:
    """The least of each of PERMUTATIONS hashes over the shingles. (A linear hash a*x+b mod p of
    small x is no random permutation: its minimum is nearly always the smallest x's, for every a.)"""
    if not grams:
        return np.zeros(PERMUTATIONS, np.uint64)
    x = np.array([int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") for g in grams],
                 np.uint64)
    with np.errstate(over="ignore"):
        return _mix(x[:, None] ^ _SEEDS[None, :]).min(axis=0)


def first_copies(texts: Sequence[str], threshold: float, kept: Sequence[bool] | None = None
                 ) -> list[tuple[int, float] | None]:
    """For each text, in order: None when it repeats no earlier kept text, else (the index of the
    earlier kept text it nearly repeats, their similarity), the most similar such one. A text is
    kept unless it repeats one, or `kept` says it is not (it may then repeat one, never be repeated)."""
    buckets: dict[tuple[int, bytes], list[int]] = {}
    grams = [shingles(t) for t in texts]
    out: list[tuple[int, float] | None] = []
    rows = PERMUTATIONS // BANDS
    for i, g in enumerate(grams):
        sig = _minhash(g)
        keys = [(b, sig[b * rows:(b + 1) * rows].tobytes()) for b in range(BANDS)]
        candidates = {j for key in keys for j in buckets.get(key, ())}
        best = max(((jaccard(g, grams[j]), -j) for j in candidates), default=None)
        if best is not None and best[0] >= threshold:
            out.append((-best[1], best[0]))
            continue
        out.append(None)
        if kept is not None and not kept[i]:
            continue
        for key in keys:
            buckets.setdefault(key, []).append(i)
    return out
