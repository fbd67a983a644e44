"""CLIP alignment: score every pair on an actor pool (`clip_embed`), then decide over the run (`clip`).

Scoring and deciding are two stages so that a threshold can be a percentile of the whole run
(DataComp's "top 30 %"), and so that changing a threshold (`--force --set clip.min_score=...`)
redoes only the decision, never the model work.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mmcurate.filters.clip_score import (
    ClipScorer,
    Weights,
    WeightsError,
    resolve_weights,
)
from mmcurate.pipelines.stage import (
    Cluster,
    GlobalStage,
    Parallel,
    Resources,
    Stage,
    decisions,
)
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config

CPUS_PER_CPU_ACTOR = 8  # torch intra-op threads per CPU actor; more actors beyond that


class ClipEmbedStage(Stage):
    """Cosine similarity of image and caption embeddings, and the image embedding, per row."""

    name = "clip_embed"
    version = "1"
    output_schema = C.CLIP_EMBED_SCHEMA
    score_columns = (C.CLIP_SCORE, C.CLIP_MODEL)
    data_columns = (C.CLIP_SCORE, C.CLIP_EMBEDDING)
    input_columns = (C.IMAGE,)

    def __init__(self, config: Config):
        super().__init__(config)
        self.weights: Weights | None = None
        self.scorer: ClipScorer | None = None

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.clip.enabled

    def prepare(self) -> dict:
        """Find and hash the weights on the driver, before any worker starts."""
        c = self.config.clip
        try:
            self.weights = resolve_weights(c.model, c.pretrained)
        except WeightsError as err:
            from mmcurate.errors import ConfigError

            raise ConfigError(f"{err.key}: {err}") from None
        w = self.weights
        return {"model": w.model, "pretrained": w.pretrained, "weights": w.path, "sha256": w.sha256, "label": w.label}

    def config_sections(self) -> dict:
        # device and batch size change speed, not scores (beyond fp16 rounding): not part of it
        c = self.config.clip
        return {"model": c.model, "pretrained": c.pretrained, "sha256": self.weights.sha256 if self.weights else None}

    def resources(self, cluster: Cluster) -> Resources:
        device = self.config.clip.device
        if device == "cuda" and not cluster.gpus:
            from mmcurate.errors import ConfigError

            raise ConfigError("clip.device: cuda, but the Ray cluster has no GPU (use auto or cpu)")
        if device != "cpu" and cluster.gpus:
            return Resources(num_cpus=min(4, cluster.node_cpus), num_gpus=1, actors=cluster.gpus)
        per_actor = min(CPUS_PER_CPU_ACTOR, cluster.node_cpus)
        return Resources(num_cpus=per_actor, actors=max(1, cluster.cpus // per_actor))

    def setup(self) -> None:
        if self.weights is None:
            self.prepare()
        if self.scorer is None:
            self.scorer = ClipScorer(self.weights, self.config.clip.device, self.config.clip.batch_size)
            self.scorer.load()

    def process(self, rows: pa.Table) -> pa.Table:
        self.setup()
        scores, embeddings, errors = self.scorer.score(rows[C.IMAGE].to_pylist(), rows[C.CAPTION].to_pylist())
        status = [C.FAILED if e else C.KEPT for e in errors]
        reason = ["undecodable_image" if e else None for e in errors]
        cols = decisions(rows, status, reason, errors)
        ok = ~np.isnan(scores)
        cols[C.CLIP_SCORE] = pa.array(np.where(ok, scores, 0), pa.float32(), mask=~ok)
        cols[C.CLIP_MODEL] = pa.array([self.weights.label] * rows.num_rows, pa.string())
        cols[C.CLIP_EMBEDDING] = pa.array(
            [None if e is None else e.astype(np.float16) for e in embeddings], pa.list_(pa.float16())
        )
        return pa.table(cols, schema=self.output_schema)


class ClipFilterStage(GlobalStage):
    """Drops pairs whose CLIP score is below `clip.min_score`, or below the run's `min_percentile`."""

    name = "clip"
    version = "1"
    output_schema = C.CLIP_SCHEMA
    score_columns = (C.CLIP_THRESHOLD,)
    input_columns = (C.CLIP_SCORE,)

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.clip.enabled

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

    def decide(self, rows: pa.Table, parallel: Parallel) -> pa.Table:
        scores = rows[C.CLIP_SCORE].to_numpy(zero_copy_only=False).astype(np.float32)
        threshold, how = self.threshold(scores)
        n = rows.num_rows
        low = scores < threshold if threshold is not None else np.zeros(n, bool)
        status = [C.DROPPED if d else C.KEPT for d in low]
        reason = ["low_clip_score" if d else None for d in low]
        detail = [
            f"clip score {s:.4f} < {threshold:.4f}{how}" if d else None for s, d in zip(scores.tolist(), low)
        ]
        cols = decisions(rows, status, reason, detail)
        cols[C.CLIP_THRESHOLD] = pa.array([threshold] * n, pa.float32())
        return pa.table(cols, schema=self.output_schema)
