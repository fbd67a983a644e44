"""The plan of a run: which per-shard stages stream together, and how they share the cluster.

Per-shard stages between two global stages form one *segment*, run as one streaming pipeline;
a global stage is a segment of its own and a barrier (it must see every shard). With
`engine.streaming: false` every stage is its own segment: the stages run one after another.

Stages of one segment run at once, so what each asks for (`Stage.resources`) is split here:

1. GPU actors first. Each GPU actor holds `engine.gpu_actor_cpus` CPUs for decoding (at most a
   node's), and the GPU stages of one segment share each GPU (k of them: 1/k GPU and 1/k of those
   CPUs each), so CPU stages can never starve them: their pools are fixed and start first.
2. CPU actor pools share what is left: each starts with one actor and grows to what it asked for
   while CPUs are free (Ray Data's autoscaler).
3. Tasks (download, quality, features, ...) take whatever CPUs are free, one per task.

If one actor of each pool plus one task would not fit in the CPUs left (a laptop running four
models and downloads at once), the pools' first actors share half of those CPUs in proportion to
what they asked, and each task reserves the same fraction of a CPU as they do, so the other half
runs several tasks at once (Ray's CPUs are reservations; the cores are time-shared). Pools then
grow only as far as leaves room for a task: every stage can always run, none waits for another.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from mmcurate.stages.base import Cluster, GlobalStage, Resources, Stage


def is_barrier(stage: Stage) -> bool:
    """Whether the stage must see every shard before it decides (a global stage)."""
    return isinstance(stage, GlobalStage) and stage.is_global()


def segments(stages: Sequence[Stage], streaming: bool = True) -> list[list[Stage]]:
    """The stages cut into segments, in order: runs of per-shard stages, and each barrier alone."""
    out: list[list[Stage]] = []
    for stage in stages:
        if is_barrier(stage) or not streaming or not out or is_barrier(out[-1][0]):
            out.append([stage])
        else:
            out[-1].append(stage)
    return out


def _fraction(value: float) -> float:
    """A CPU share Ray accepts: a whole number above one, hundredths below."""
    return float(math.floor(value)) if value >= 1 else max(0.01, math.floor(value * 100) / 100)


def split(wants: Sequence[Resources], cluster: Cluster, gpu_actor_cpus: int = 4) -> list[Resources]:
    """What each stage of one segment gets on `cluster`, from what each wants (see the module doc)."""
    if len(wants) == 1 and not wants[0].num_gpus:
        return list(wants)  # alone on the cluster: all it asked for
    gpu_stages = [i for i, r in enumerate(wants) if r.num_gpus]
    out = list(wants)
    reserved = 0.0
    if gpu_stages:
        k = len(gpu_stages)
        per_gpu = min(gpu_actor_cpus, cluster.node_cpus)
        if any(not r.num_gpus for r in wants):  # leave CPU stages at least one CPU
            per_gpu = max(min(per_gpu, (cluster.cpus - 1) / max(cluster.gpus, 1)), 0.01)
        for i in gpu_stages:
            out[i] = replace(wants[i], num_cpus=_fraction(per_gpu / k), num_gpus=1 / k, min_actors=None)
            reserved += out[i].num_cpus * out[i].actors
    rest = max(cluster.cpus - reserved, 1)
    pools = [i for i, r in enumerate(wants) if r.actors and not r.num_gpus]
    tasks = [i for i, r in enumerate(wants) if not r.actors]
    first = sum(wants[i].num_cpus for i in pools)  # one actor of each pool
    task = max((wants[i].num_cpus for i in tasks), default=0.0)
    scale = 1.0
    if first + task > rest:  # too small for all at once: pools' first actors get half, tasks the rest
        scale = (rest / 2 if tasks else rest) / first if first else rest / task
    for i in pools:
        r = wants[i]
        out[i] = replace(r, num_cpus=_fraction(r.num_cpus * scale), actors=max(1, min(r.actors, int(rest // r.num_cpus))),
                         min_actors=1)
    for i in tasks:
        out[i] = replace(wants[i], num_cpus=_fraction(wants[i].num_cpus * scale))
    # grown to their largest, the pools still leave room for a task
    room = rest - (_fraction(task * scale) if tasks else 0.0)
    while sum(out[i].num_cpus * out[i].actors for i in pools) > room + 1e-9:
        biggest = max((i for i in pools if out[i].actors > 1), key=lambda i: out[i].num_cpus * out[i].actors, default=None)
        if biggest is None:
            break
        out[biggest] = replace(out[biggest], actors=out[biggest].actors - 1)
    return out
