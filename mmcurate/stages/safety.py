"""Safety: its filters drop toxic captions (`filters/toxicity.py`: detoxify, or profanity-check
offline) and NSFW images (`filters/nsfw.py`: NudeNet on the pixels, or with `safety.nsfw.model:
clip_head` a head on the CLIP image embedding clip_embed stored, which this stage then reads
instead of the image: the same `nsfw` score, threshold and `nsfw_image` reason either way).

One actor-pool stage: each worker loads its models once. Its actors get a GPU where detoxify may
use one (a cluster with GPUs, `safety.toxicity.device` not cpu); NudeNet (through onnxruntime's
CUDA provider, the `gpu` extra) and a CLIP head then run there too (`filters/hardware.py`).
Every row scored gets its scores in the ledger, dropped or not, so a researcher can re-cut
`toxicity` and `nsfw` later; an image that cannot be decoded fails with `undecodable_image`.
"""

from __future__ import annotations

from mmcurate.filters.hardware import place
from mmcurate.schemas.errors import ConfigError
from mmcurate.stages.base import Cluster, FilterStage, Resources

CPUS_PER_ACTOR = 4


class SafetyStage(FilterStage):
    name = "safety"
    version = "1"
    gpu = False  # whether its actors get a GPU: decided by `resources` on the driver, read on the workers

    def resources(self, cluster: Cluster) -> Resources:
        wants = self._resources(cluster)
        self.gpu = wants.num_gpus > 0
        return wants

    def setup(self) -> None:
        place(self.active, self.gpu)
        super().setup()

    def _resources(self, cluster: Cluster) -> Resources:
        t = self.config.safety.toxicity
        if t.enabled and t.device == "cuda" and not cluster.gpus:
            raise ConfigError("safety.toxicity.device: cuda, but the Ray cluster has no GPU (use auto or cpu)")
        if t.enabled and t.device != "cpu" and cluster.gpus and t.model != "profanity-check":
            return Resources(num_cpus=min(4, cluster.node_cpus), num_gpus=1, actors=cluster.gpus)
        per_actor = min(CPUS_PER_ACTOR, cluster.node_cpus)
        return Resources(num_cpus=per_actor, actors=max(1, cluster.cpus // per_actor))
