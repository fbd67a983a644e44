"""DataComp's image-based selection over the whole run: keep the pool's samples in the k-means
clusters that a reference set's images fall into (`filters/image_based.py`), drop the rest."""

from __future__ import annotations

import math
import time

import numpy as np
import pyarrow as pa

from mmcurate.algos.embeddings import embeddings_of, nearest_centre
from mmcurate.algos.parallel import Parallel, Tasks
from mmcurate.filters import image_based
from mmcurate.filters.base import Threshold, Verdicts
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config
from mmcurate.schemas.errors import ConfigError
from mmcurate.stages import embedding_flow
from mmcurate.stages.base import GlobalStage, ShardIO, assemble
from mmcurate.stages.embedding_flow import without_default_sample


class ImageBasedStage(GlobalStage):
    """Drops pool samples outside the k-means clusters the reference images fall into (`off_target_cluster`)."""

    name = "image_based"
    version = "1"
    output_schema = C.IMAGE_BASED_SCHEMA
    score_columns = (C.IMAGE_CLUSTER,)
    input_columns = (C.CLIP_EMBEDDING,)
    settings = ("quality.image_based",)
    thresholds = (Threshold("off_target_cluster", C.IMAGE_CLUSTER),)

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.clip.enabled and config.quality.image_based.enabled

    def config_sections(self) -> dict:
        return without_default_sample(self.config.quality.image_based.model_dump())

    def _embed_images(self, images: list[bytes]) -> np.ndarray:
        from mmcurate.filters.clip_score import ClipScorer, resolve_weights

        c = self.config.clip
        scorer = ClipScorer(resolve_weights(c.model, c.pretrained), c.device, c.batch_size)
        _, emb, _ = scorer.score(images, [""] * len(images))
        return np.asarray([e for e in emb if e is not None], np.float32)

    def reference(self, dim: int | None) -> np.ndarray:
        """The reference set's unit embeddings; ConfigError when it cannot be read or is not `dim`-d."""
        cfg = self.config.quality.image_based
        try:
            reference = image_based.load_reference(cfg.reference_path, self._embed_images)
        except ValueError as err:
            raise ConfigError(f"quality.image_based.reference_path: {err}") from None
        if dim is not None and dim != reference.shape[1]:
            raise ConfigError(f"quality.image_based.reference_path: reference embeddings are {reference.shape[1]}-d, "
                              f"the run's CLIP gives {dim}-d (embed the reference with the same model)")
        return reference

    def verdicts(self, labels: np.ndarray, keep: np.ndarray, targets: int, k: int, references: int) -> Verdicts:
        return Verdicts(
            scores={C.IMAGE_CLUSTER: labels},
            reasons=[None if x else "off_target_cluster" for x in keep],
            details=[None if x else f"nearest centre {label} is not among the {targets} of {k} centres "
                     f"that the {references} reference images fall into" for x, label in zip(keep, labels.tolist())],
        )

    def decide_shards(self, io: ShardIO, tasks: Tasks) -> list:
        parts = math.ceil(io.rows / io.rows_per_partition)
        if parts <= 1:
            return super().decide_shards(io, tasks)
        return decide_in_partitions(self, io, tasks)

    def judge(self, rows: pa.Table, parallel: Parallel) -> Verdicts:
        cfg = self.config.quality.image_based
        if rows.num_rows == 0:
            self.reference(None)
            return Verdicts()
        pool = embeddings_of(rows[C.CLIP_EMBEDDING])
        reference = self.reference(pool.shape[1])
        labels, keep, targets, k = image_based.select(pool, reference, cfg.clusters, sample=cfg.kmeans_sample)
        return self.verdicts(labels, keep, targets, k, len(reference))


def _targets(stage: GlobalStage, centres_: np.ndarray) -> tuple[np.ndarray, int]:
    reference = stage.reference(centres_.shape[1])
    return np.unique(nearest_centre(reference, centres_)), len(reference)


def _select(stage: GlobalStage, io: ShardIO, shard: int, started: float, centres_: np.ndarray,
            targets: tuple[np.ndarray, int]) -> list[dict]:
    rows = io.read(shard)
    labels = nearest_centre(embeddings_of(rows[C.CLIP_EMBEDDING]), centres_) if rows.num_rows else np.zeros(0, np.int64)
    verdicts = stage.verdicts(labels, np.isin(labels, targets[0]), len(targets[0]), len(centres_), targets[1])
    return [io.write(shard, assemble(stage, rows, verdicts), started)]


def decide_in_partitions(stage: GlobalStage, io: ShardIO, tasks: Tasks) -> list:
    """References to each pending shard's [stats]."""
    cfg = stage.config.quality.image_based
    started = time.time()
    k = min(image_based.centres_wanted(io.rows, cfg.clusters), cfg.kmeans_sample // 10)  # 10 sample rows a centre
    fitted = embedding_flow.centres(tasks, io, k, cfg.kmeans_sample)
    targets = tasks.submit(_targets, stage, fitted)
    return [tasks.submit(_select, stage, io, s, started, fitted, targets) for s in io.pending]
