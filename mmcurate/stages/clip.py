"""The CLIP decision: drop pairs below `clip.min_score`, or below the run's `min_percentile`.

A global stage with `min_percentile`, since a percentile is one of the whole run's scores; with a
fixed `min_score` each row's decision is its own, so it runs shard by shard and streams. The
scores themselves come from `clip_embed`, so a new threshold redoes only this.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mmcurate.algos.parallel import Parallel
from mmcurate.filters.base import Histogram, Verdicts
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config
from mmcurate.stages.base import GlobalStage


class ClipFilterStage(GlobalStage):
    """Drops pairs whose CLIP score is below `clip.min_score`, or below the run's `min_percentile`."""

    name = "clip"
    version = "1"
    output_schema = C.CLIP_SCHEMA
    score_columns = (C.CLIP_THRESHOLD,)
    input_columns = (C.CLIP_SCORE,)
    settings = ("clip.min_score", "clip.min_percentile")
    threshold_reasons = frozenset({"low_clip_score"})

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
            return value, f" (the {c.min_percentile:g}th percentile of {len(scores)} scored rows)"
        return c.min_score, ""

    def judge(self, rows: pa.Table, parallel: Parallel) -> Verdicts:
        scores = rows[C.CLIP_SCORE].to_numpy(zero_copy_only=False).astype(np.float32)
        threshold, how = self.threshold(scores)
        low = scores < threshold if threshold is not None else np.zeros(rows.num_rows, bool)
        return Verdicts(
            scores={C.CLIP_THRESHOLD: [threshold] * rows.num_rows},
            reasons=["low_clip_score" if d else None for d in low],
            details=[f"clip score {s:.4f} < {threshold:.4f}{how}" if d else None for s, d in zip(scores.tolist(), low)],
        )
