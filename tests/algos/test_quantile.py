"""The distributed percentile is numpy's, bit for bit, whatever the shards and the values."""

from __future__ import annotations

import numpy as np
import pytest

from mmcurate.algos import quantile
from mmcurate.algos.parallel import SerialTasks


@pytest.mark.parametrize("fetch", [1, 7, 100_000])  # 1: every pass narrows to one value's bin
def test_percentile_equals_numpy(fetch, monkeypatch):
    monkeypatch.setattr(quantile, "FETCH", fetch)
    rng = np.random.default_rng(fetch)
    for trial in range(60):
        n = int(rng.integers(1, 4000))
        values = [rng.normal(size=n).astype(np.float32).astype(np.float64),  # CLIP-like scores
                  rng.integers(0, 3, size=n).astype(np.float64),  # heavy ties
                  np.full(n, 0.25), rng.random(n) * 1e-12 + 1.0][trial % 4]  # one value; a range of ulps
        shards = np.array_split(values, int(rng.integers(1, 7)))
        p = float(rng.choice([0.0, 100.0, 50.0, 12.5, rng.random() * 100]))
        got, count = quantile.percentile(lambda s: shards[s], list(range(len(shards))), p, SerialTasks())
        assert count == n and got == np.percentile(values, p), (trial, p, got)


def test_no_values():
    assert quantile.percentile(lambda s: np.empty(0), [0, 1], 30.0, SerialTasks()) == (None, 0)
