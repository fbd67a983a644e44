"""First claims in partitions make the decisions of one pass in order: random items with one to
three keys each over a small vocabulary (many repeats, chains through refused items), in several
shards and partitions."""

from __future__ import annotations

import numpy as np
import pytest

from mmcurate.algos import claims
from mmcurate.algos.parallel import SerialTasks


@pytest.mark.parametrize("seed", range(6))
def test_first_claims_equal_one_pass(seed):
    rng = np.random.default_rng(seed)
    shards, parts, vocab = int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(5, 300))
    keyed, in_order = [], []
    for s in range(shards):
        items, keys = [], []
        for i in range(int(rng.integers(0, 80))):
            mine = [int(k).to_bytes(12, "little") for k in rng.integers(0, vocab, int(rng.integers(1, 4)))]
            in_order.append(((s << 32) | i, mine))
            items += [(s << 32) | i] * len(mine)
            keys += mine
        keyed.append({"item": np.array(items, np.int64), "key": np.array(keys, "S12")})
    seen, want = set(), set()
    for item, mine in in_order:
        if any(k in seen for k in mine):
            want.add(item)
        else:
            seen.update(mine)
    got = set()
    for per_part in claims.first_claims(SerialTasks(), keyed, parts):
        for g, refused in enumerate(per_part):
            if refused:
                assert ((refused["gid"] >> 32) % parts == g).all()
                got.update(refused["gid"].tolist())
    assert got == want and (len(want) > 0 or len(in_order) < 10)
