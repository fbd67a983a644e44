"""CLIP scoring on an actor pool: the cosine of image and caption embeddings, and the image embedding.

Scoring and deciding (`clip`) are two stages so that a threshold can be a percentile of the whole
run (DataComp's "top 30 %"), and so that changing a threshold (`--force --set clip.min_score=...`)
redoes only the decision, never the model work.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mmcurate.filters.base import Verdicts
from mmcurate.filters.clip_score import ClipScorer, Weights, resolve_weights
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config
from mmcurate.schemas.errors import ConfigError
from mmcurate.stages.base import Cluster, Resources, Stage

CPUS_PER_CPU_ACTOR = 8  # torch intra-op threads per CPU actor; more actors beyond that


class ClipEmbedStage(Stage):
    """Cosine similarity of image and caption embeddings, and the image embedding, per row."""

    name = "clip_embed"
    version = "1"
    score_columns = (C.CLIP_SCORE, C.CLIP_MODEL)
    data_columns = (C.CLIP_SCORE, C.CLIP_EMBEDDING)
    input_columns = (C.IMAGE,)
    settings = ("clip.model", "clip.pretrained")

    def __init__(self, config: Config):
        super().__init__(config)
        self.weights: Weights | None = None
        self.scorer: ClipScorer | None = None

    @property
    def output_schema(self) -> pa.Schema:  # type: ignore[override]
        """The embedding as fixed_size_list<float16, d>, d from the loaded model (on the driver,
        before a model is loaded, only the score columns' types are needed)."""
        return C.clip_embed_schema(self.scorer.dim if self.scorer is not None else None)

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.clip.enabled

    def prepare(self) -> dict:
        """Find and hash the weights on the driver, before any worker starts."""
        c = self.config.clip
        if c.decode == "gpu" and c.device == "cpu":
            raise ConfigError("clip.decode: gpu decodes on the CUDA device, but clip.device is cpu (use auto or cpu)")
        self.weights = resolve_weights(c.model, c.pretrained)
        w = self.weights
        return {"model": w.model, "pretrained": w.pretrained, "weights": w.path, "sha256": w.sha256, "label": w.label,
                "decode": self.decode_plan()}

    def decode_plan(self) -> str:
        """Where images decode, as far as the config says before a worker starts (the manifest's record)."""
        c = self.config.clip
        if c.decode == "cpu" or c.device == "cpu":
            return "cpu"
        if c.decode == "gpu" or c.device == "cuda":
            return "gpu (JPEGs; other formats on cpu)"
        return "auto: gpu (JPEGs; other formats on cpu) on CUDA workers, else cpu"

    def config_sections(self) -> dict:
        # device, batch size and decode change speed, not scores (beyond fp16 rounding and
        # resampling noise): not part of it
        c = self.config.clip
        return {"model": c.model, "pretrained": c.pretrained, "sha256": self.weights.sha256 if self.weights else None}

    def resources(self, cluster: Cluster) -> Resources:
        device = self.config.clip.device
        if device == "cuda" and not cluster.gpus:
            raise ConfigError("clip.device: cuda, but the Ray cluster has no GPU (use auto or cpu)")
        if self.config.clip.decode == "gpu" and (device == "cpu" or not cluster.gpus):
            raise ConfigError("clip.decode: gpu, but clip runs on CPU here (clip.device: "
                              f"{device}, {cluster.gpus} GPUs in the Ray cluster); use auto or cpu")
        if device != "cpu" and cluster.gpus:
            return Resources(num_cpus=min(4, cluster.node_cpus), num_gpus=1, actors=cluster.gpus)
        per_actor = min(CPUS_PER_CPU_ACTOR, cluster.node_cpus)
        return Resources(num_cpus=per_actor, actors=max(1, cluster.cpus // per_actor))

    def setup(self) -> None:
        if self.weights is None:
            self.prepare()
        if self.scorer is None:
            c = self.config.clip
            self.scorer = ClipScorer(self.weights, c.device, c.batch_size, decode=c.decode)
            self.scorer.load()

    def judge(self, rows: pa.Table) -> Verdicts:
        self.setup()
        scores, embeddings, errors = self.scorer.score(rows[C.IMAGE].to_pylist(), rows[C.CAPTION].to_pylist())
        ok = ~np.isnan(scores)
        return Verdicts(
            scores={C.CLIP_SCORE: pa.array(np.where(ok, scores, 0), pa.float32(), mask=~ok),
                    C.CLIP_MODEL: [self.weights.label] * rows.num_rows},
            data={C.CLIP_EMBEDDING: pa.array([None if e is None else e.astype(np.float16) for e in embeddings],
                                             C.embedding_type(self.scorer.dim))},
            reasons=["undecodable_image" if e else None for e in errors], details=errors, failed=True,
        )
