"""Quality decisions on CLIP image embeddings: image-based selection (global) and heads (per shard)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mmcurate.errors import ConfigError
from mmcurate.filters import image_based
from mmcurate.filters.embedding_head import EmbeddingHead, HeadError
from mmcurate.pipelines.semantic_dedup import embeddings_of
from mmcurate.pipelines.stage import GlobalStage, Parallel, Stage, decisions
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config


class ImageBasedStage(GlobalStage):
    """Drops pool samples outside the k-means clusters the reference images fall into (`off_target_cluster`)."""

    name = "image_based"
    version = "1"
    output_schema = C.IMAGE_BASED_SCHEMA
    score_columns = (C.IMAGE_CLUSTER,)
    input_columns = (C.CLIP_EMBEDDING,)

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.clip.enabled and config.quality.image_based.enabled

    def config_sections(self) -> dict:
        return self.config.quality.image_based.model_dump()

    def _embed_images(self, images: list[bytes]) -> np.ndarray:
        from mmcurate.filters.clip_score import ClipScorer, resolve_weights

        c = self.config.clip
        scorer = ClipScorer(resolve_weights(c.model, c.pretrained), c.device, c.batch_size)
        _, emb, _ = scorer.score(images, [""] * len(images))
        return np.asarray([e for e in emb if e is not None], np.float32)

    def decide(self, rows: pa.Table, parallel: Parallel) -> pa.Table:
        cfg = self.config.quality.image_based
        try:
            reference = image_based.load_reference(cfg.reference_path, self._embed_images)
        except ValueError as err:
            raise ConfigError(f"quality.image_based.reference_path: {err}") from None
        n = rows.num_rows
        if n == 0:
            return pa.table(decisions(rows, [], [], []) | {C.IMAGE_CLUSTER: pa.array([], pa.int32())},
                            schema=self.output_schema)
        pool = embeddings_of(rows[C.CLIP_EMBEDDING])
        if pool.shape[1] != reference.shape[1]:
            raise ConfigError(f"quality.image_based.reference_path: reference embeddings are {reference.shape[1]}-d, "
                              f"the run's CLIP gives {pool.shape[1]}-d (embed the reference with the same model)")
        labels, keep, targets, k = image_based.select(pool, reference, cfg.clusters)
        status = [C.KEPT if x else C.DROPPED for x in keep]
        reason = [None if x else "off_target_cluster" for x in keep]
        detail = [None if x else f"nearest centre {label} is not among the {targets} of {k} centres "
                  f"that the {len(reference)} reference images fall into" for x, label in zip(keep, labels.tolist())]
        cols = decisions(rows, status, reason, detail)
        cols[C.IMAGE_CLUSTER] = pa.array(labels, pa.int32())
        return pa.table(cols, schema=self.output_schema)


class ClipHeadsStage(Stage):
    """LAION-style aesthetic score (`low_aesthetic_score`) and watermark probability (`watermark`)."""

    name = "clip_heads"
    version = "1"
    output_schema = C.CLIP_HEADS_SCHEMA
    score_columns = (C.AESTHETIC, C.WATERMARK)
    input_columns = (C.CLIP_EMBEDDING,)

    def __init__(self, config: Config):
        super().__init__(config)
        self.heads: dict[str, EmbeddingHead] = {}
        self.sha256: dict[str, str] = {}  # of each head's weights, found by prepare()

    @classmethod
    def enabled(cls, config: Config) -> bool:
        q = config.quality
        return config.clip.enabled and (q.aesthetic.enabled or q.watermark.enabled)

    def _enabled_heads(self) -> list[tuple[str, str, bool]]:
        """(key, weights path, output is a probability) of each enabled head."""
        q = self.config.quality
        return [(key, part.weights, prob) for key, part, prob in
                (("aesthetic", q.aesthetic, False), ("watermark", q.watermark, True)) if part.enabled]

    def config_sections(self) -> dict:
        q = self.config.quality
        return {key: {**getattr(q, key).model_dump(), "sha256": self.sha256.get(key)}
                for key, _, _ in self._enabled_heads()}

    def prepare(self) -> dict:
        """Load and hash each head once on the driver: a bad file exits 2 naming its key."""
        from mmcurate.filters.clip_score import file_sha256

        info = {}
        for key, weights, prob in self._enabled_heads():
            head = EmbeddingHead(weights, probability=prob)
            try:
                head.load()
            except HeadError as err:
                raise ConfigError(f"quality.{key}.weights: {err}") from None
            self.heads[key], self.sha256[key] = head, file_sha256(weights)
            info[key] = {"weights": weights, "sha256": self.sha256[key], "inputs": head.in_features}
        return info

    def setup(self) -> None:
        for key, weights, prob in self._enabled_heads():
            if key not in self.heads:
                self.heads[key] = EmbeddingHead(weights, probability=prob)
                self.heads[key].load()

    def process(self, rows: pa.Table) -> pa.Table:
        self.setup()
        q = self.config.quality
        n = rows.num_rows
        emb = embeddings_of(rows[C.CLIP_EMBEDDING]) if n else np.zeros((0, 0), np.float32)
        scores = {}
        for key, head in self.heads.items():
            try:
                scores[key] = head.score(emb) if n else np.zeros(0, np.float32)
            except HeadError as err:
                raise ConfigError(f"quality.{key}.weights: {err}") from None
        status, reason, detail = [C.KEPT] * n, [None] * n, [None] * n
        for i in range(n):
            if "aesthetic" in scores and scores["aesthetic"][i] < q.aesthetic.min_score:
                status[i], reason[i] = C.DROPPED, "low_aesthetic_score"
                detail[i] = f"aesthetic score {scores['aesthetic'][i]:.3f} < {q.aesthetic.min_score}"
            elif "watermark" in scores and scores["watermark"][i] > q.watermark.max_score:
                status[i], reason[i] = C.DROPPED, "watermark"
                detail[i] = f"watermark probability {scores['watermark'][i]:.3f} > {q.watermark.max_score}"
        cols = decisions(rows, status, reason, detail)
        for key, column in (("aesthetic", C.AESTHETIC), ("watermark", C.WATERMARK)):
            cols[column] = pa.array(scores[key], pa.float32()) if key in scores else pa.nulls(n, pa.float32())
        return pa.table(cols, schema=self.output_schema)
