"""The CLIP decision: drop pairs below `clip.min_score`, or below the run's `min_percentile`.

A global stage with `min_percentile`, since a percentile is one of the whole run's scores: it is
found exactly by histogram passes over the shards (`algos/quantile`), then each shard is decided
in a task of its own. With a fixed `min_score` each row's decision is its own, so it runs shard
by shard and streams. The scores come from `clip_embed`, so a new threshold redoes only this.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mmcurate.algos import quantile
from mmcurate.algos.parallel import Parallel, Tasks
from mmcurate.filters.base import Histogram, Threshold, Verdicts
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config
from mmcurate.stages.base import GlobalStage, ShardIO, assemble


def _scores(rows: pa.Table) -> np.ndarray:
    return rows[C.CLIP_SCORE].to_numpy(zero_copy_only=False).astype(np.float32)


@dataclass
class _ShardScores:
    """A shard's scores as the percentile sees them (float32 scores compared as float64)."""

    io: ShardIO

    def __call__(self, shard: int) -> np.ndarray:
        v = _scores(self.io.read(shard)).astype(np.float64)
        return v[~np.isnan(v)]


def _decide_shard(stage: ClipFilterStage, io: ShardIO, shard: int, threshold: float | None, how: str,
                  started: float) -> list[dict]:
    rows = io.read(shard)
    return [io.write(shard, assemble(stage, rows, stage.verdicts(_scores(rows), threshold, how)), started)]


class ClipFilterStage(GlobalStage):
    """Drops pairs whose CLIP score is below `clip.min_score`, or below the run's `min_percentile`."""

    name = "clip"
    version = "1"
    output_schema = C.CLIP_SCHEMA
    score_columns = (C.CLIP_THRESHOLD,)
    input_columns = (C.CLIP_SCORE,)
    settings = ("clip.min_score", "clip.min_percentile")
    thresholds = (Threshold("low_clip_score", C.CLIP_SCORE, "clip.min_score", "min", unset="clip.min_percentile"),)

    def __init__(self, config: Config):
        super().__init__(config)
        p = config.clip.min_percentile
        self.histograms = (Histogram(C.CLIP_SCORE, "clip.min_score", "min") if p is None else
                           Histogram(C.CLIP_SCORE, None, f"min ({p:g}th percentile)", threshold_score=C.CLIP_THRESHOLD),)

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.clip.enabled

    def is_global(self) -> bool:
        return self.config.clip.min_percentile is not None

    def config_sections(self) -> dict:
        return {"min_score": self.config.clip.min_score, "min_percentile": self.config.clip.min_percentile}

    def threshold(self, scores: np.ndarray) -> tuple[float | None, str]:
        """The score a row needs, and how it was chosen (for the detail)."""
        c = self.config.clip
        if c.min_percentile is not None:
            if not len(scores):
                return None, ""
            value = float(np.percentile(scores.astype(np.float64), c.min_percentile))
            return value, self._how(len(scores))
        return c.min_score, ""

    def _how(self, n: int) -> str:
        return f" (the {self.config.clip.min_percentile:g}th percentile of {n} scored rows)"

    def decide_shards(self, io: ShardIO, tasks: Tasks) -> list:
        """The run's percentile by histogram passes over the shards, then a task per pending shard."""
        started = time.time()
        threshold, n = quantile.percentile(_ShardScores(io), list(range(io.shards)), self.config.clip.min_percentile,
                                           tasks)
        how = self._how(n) if threshold is not None else ""
        return [tasks.submit(_decide_shard, self, io, shard, threshold, how, started) for shard in io.pending]

    def verdicts(self, scores: np.ndarray, threshold: float | None, how: str) -> Verdicts:
        low = scores < threshold if threshold is not None else np.zeros(len(scores), bool)
        return Verdicts(
            scores={C.CLIP_THRESHOLD: [threshold] * len(scores)},
            reasons=["low_clip_score" if d else None for d in low],
            details=[f"clip score {s:.4f} < {threshold:.4f}{how}" if d else None for s, d in zip(scores.tolist(), low)],
        )

    def judge(self, rows: pa.Table, parallel: Parallel) -> Verdicts:
        scores = _scores(rows)
        return self.verdicts(scores, *self.threshold(scores))
