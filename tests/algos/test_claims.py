"""First claims in partitions make the decisions of one pass in order: random items with one to
three keys each over a small vocabulary (many repeats, chains through refused items), in several
shards and partitions; keys of capacity one (no "cap" column) or of random capacities."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mmcurate.algos import claims
from mmcurate.algos.parallel import SerialTasks


@pytest.mark.parametrize("seed", range(8))
def test_first_claims_equal_one_pass(seed):
    rng = np.random.default_rng(seed)
    shards, parts, vocab = int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(5, 300))
    capped = seed % 2 == 1
    caps = rng.integers(1, 5, vocab) if capped else np.ones(vocab, np.int64)
    keyed, in_order = [], []
    for s in range(shards):
        items, keys, cap = [], [], []
        for i in range(int(rng.integers(0, 80))):
            mine = rng.integers(0, vocab, int(rng.integers(1, 4))).tolist()  # a key may come twice
            in_order.append(((s << 32) | i, mine))
            items += [(s << 32) | i] * len(mine)
            keys += [int(k).to_bytes(12, "little") for k in mine]
            cap += [int(caps[k]) for k in mine]
        keyed.append({"item": np.array(items, np.int64), "key": np.array(keys, "S12"),
                      **({"cap": np.array(cap, np.int64)} if capped else {})})
    held, want = Counter(), {}
    for item, mine in in_order:
        full = {int(k).to_bytes(12, "little") for k in set(mine) if held[k] >= caps[k]}
        if full:
            want[item] = full
        else:
            held.update(set(mine))
    got: dict[int, set] = {}
    for per_part in claims.first_claims(SerialTasks(), keyed, parts):
        for g, refused in enumerate(per_part):
            if refused:
                assert ((refused["gid"] >> 32) % parts == g).all()
                for gid, key in zip(refused["gid"].tolist(), refused["key"].tolist()):
                    got.setdefault(gid, set()).add(key.ljust(12, b"\0"))
    assert got == want and (len(want) > 0 or len(in_order) < 10)


def test_a_key_within_its_capacity_joins_nothing():
    """Items that share only keys held within their capacity are never refused (and never routed)."""
    keyed = [{"item": np.arange(6, dtype=np.int64), "key": np.array([b"a"] * 6, "S12"),
              "cap": np.full(6, 6, np.int64)}]
    assert claims._shared(*claims._by_key(keyed[0], 1)).shape == (0, 2)
    assert not any(r for per_part in claims.first_claims(SerialTasks(), keyed, 1) for r in per_part)
    keyed[0]["cap"] = np.full(6, 4, np.int64)
    refused = [r for per_part in claims.first_claims(SerialTasks(), keyed, 1) for r in per_part if r]
    assert sorted(refused[0]["gid"].tolist()) == [4, 5]
