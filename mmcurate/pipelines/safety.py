"""Safety: drop toxic captions (detoxify, or profanity-check offline) and NSFW images (NudeNet).

One actor-pool stage: each worker loads its models once. Every row scored gets its scores in
the ledger, dropped or not, so a researcher can re-cut `toxicity` and `nsfw` later; an image
that cannot be decoded fails with `undecodable_image`.
"""

from __future__ import annotations

import pyarrow as pa

from mmcurate.errors import ConfigError
from mmcurate.pipelines.stage import Cluster, Resources, Stage, decisions
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config

CPUS_PER_ACTOR = 4


def model_error(key: str, message: str) -> ConfigError:
    return ConfigError(f"{key}: {message}")


class SafetyStage(Stage):
    name = "safety"
    version = "1"
    output_schema = C.SAFETY_SCHEMA
    score_columns = (C.TOXICITY, C.TOXICITY_CLASS, C.TOXICITY_MODEL, C.NSFW, C.NSFW_CLASS)
    input_columns = (C.IMAGE,)

    def __init__(self, config: Config):
        super().__init__(config)
        self.toxicity_model = None  # filters.toxicity.ToxicityModel, found on the driver
        self.nsfw_weights: str | None = None
        self._toxicity = None
        self._nsfw = None

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.safety.toxicity.enabled or config.safety.nsfw.enabled

    def prepare(self) -> dict:
        from mmcurate.filters import toxicity

        s = self.config.safety
        info = {}
        if s.toxicity.enabled:
            t = s.toxicity
            try:
                self.toxicity_model = toxicity.resolve(t.model, t.checkpoint, t.huggingface_config_path)
            except toxicity.ToxicityModelError as err:
                raise model_error(err.key, str(err)) from None
            m = self.toxicity_model
            info["toxicity"] = {"model": m.model, "checkpoint": t.checkpoint, "sha256": m.sha256, "label": m.label}
        if s.nsfw.enabled:
            from pathlib import Path

            from mmcurate.filters.clip_score import file_sha256
            from mmcurate.filters.nsfw import default_weights

            try:
                self.nsfw_weights = s.nsfw.weights or default_weights()
            except ImportError:
                raise model_error("safety.nsfw.enabled", "the NSFW detector needs NudeNet, an optional extra "
                                  "(AGPL licence file in its wheel): pip install 'mmcurate[nsfw]', "
                                  "or set safety.nsfw.enabled: false") from None
            if not Path(self.nsfw_weights).is_file():
                raise model_error("safety.nsfw.weights", f"{self.nsfw_weights}: no such file")
            info["nsfw"] = {"model": "nudenet-320n", "weights": self.nsfw_weights,
                            "sha256": file_sha256(self.nsfw_weights)}
        self._info = info
        return info

    def config_sections(self) -> dict:
        s = self.config.safety
        info = getattr(self, "_info", {})
        return {
            "toxicity": {**s.toxicity.model_dump(exclude={"batch_size", "device"}),
                         "sha256": info.get("toxicity", {}).get("sha256")} if s.toxicity.enabled else None,
            "nsfw": {**s.nsfw.model_dump(exclude={"batch_size"}),
                     "sha256": info.get("nsfw", {}).get("sha256")} if s.nsfw.enabled else None,
        }

    def resources(self, cluster: Cluster) -> Resources:
        t = self.config.safety.toxicity
        if t.enabled and t.device == "cuda" and not cluster.gpus:
            raise ConfigError("safety.toxicity.device: cuda, but the Ray cluster has no GPU (use auto or cpu)")
        if t.enabled and t.device != "cpu" and cluster.gpus and t.model != "profanity-check":
            return Resources(num_cpus=min(4, cluster.node_cpus), num_gpus=1, actors=cluster.gpus)
        per_actor = min(CPUS_PER_ACTOR, cluster.node_cpus)
        return Resources(num_cpus=per_actor, actors=max(1, cluster.cpus // per_actor))

    def setup(self) -> None:
        s = self.config.safety
        if (s.toxicity.enabled and self.toxicity_model is None) or (s.nsfw.enabled and self.nsfw_weights is None):
            self.prepare()
        if s.toxicity.enabled and self._toxicity is None:
            from mmcurate.filters.toxicity import ToxicityScorer

            self._toxicity = ToxicityScorer(self.toxicity_model, s.toxicity.device, s.toxicity.batch_size)
        if s.nsfw.enabled and self._nsfw is None:
            from mmcurate.filters.nsfw import NsfwDetector

            self._nsfw = NsfwDetector(self.nsfw_weights, s.nsfw.batch_size)

    def process(self, rows: pa.Table) -> pa.Table:
        self.setup()
        s = self.config.safety
        n = rows.num_rows
        tox = self._toxicity.score(rows[C.CAPTION].to_pylist()) if self._toxicity else [(None, None)] * n
        nsfw = self._nsfw.score(rows[C.IMAGE].to_pylist()) if self._nsfw else None
        status, reason, detail = [], [], []
        for i in range(n):
            t_score, t_class = tox[i]
            found = None
            if nsfw is not None and nsfw[i].error:
                found = (C.FAILED, "undecodable_image", nsfw[i].error)
            elif t_score is not None and t_score > s.toxicity.max_score:
                found = (C.DROPPED, "toxic_caption", f"toxicity {t_score:.4f} ({t_class}) > {s.toxicity.max_score:g}")
            elif nsfw is not None and nsfw[i].score > s.nsfw.max_score:
                found = (C.DROPPED, "nsfw_image", f"nsfw {nsfw[i].score:.4f} ({nsfw[i].top}) > {s.nsfw.max_score:g}")
            status.append(found[0] if found else C.KEPT)
            reason.append(found[1] if found else None)
            detail.append(found[2] if found else None)
        cols = decisions(rows, status, reason, detail)
        label = self.toxicity_model.label if self.toxicity_model else None
        cols[C.TOXICITY] = pa.array([t for t, _ in tox], pa.float32())
        cols[C.TOXICITY_CLASS] = pa.array([c for _, c in tox], pa.string())
        cols[C.TOXICITY_MODEL] = pa.array([label if self._toxicity else None] * n, pa.string())
        cols[C.NSFW] = pa.array([r.score for r in nsfw] if nsfw else [None] * n, pa.float32())
        cols[C.NSFW_CLASS] = pa.array([r.top for r in nsfw] if nsfw else [None] * n, pa.string())
        return pa.table(cols, schema=self.output_schema)
