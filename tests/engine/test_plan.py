"""The plan: which stages stream together, where the barriers are, and the CPU/GPU split."""

from __future__ import annotations

from mmcurate.engine.plan import segments, split
from mmcurate.schemas.config import Config
from mmcurate.stages import build_stages
from mmcurate.stages.base import Cluster, Resources


def names(config: dict, streaming: bool = True) -> list[list[str]]:
    stages = build_stages(Config.model_validate({"input": {"path": "-"}, **config}))
    return [[s.name for s in segment] for segment in segments(stages, streaming)]


def test_only_global_decisions_are_barriers():
    fixed = {"clip": {"model": "local-dir:/m", "min_score": 0.2}, "safety": {"toxicity": {"model": "profanity-check"}}}
    assert names(fixed) == [["download", "features"], ["dedup"], ["clip_embed", "clip", "safety", "privacy"]]
    percentile = {**fixed, "clip": {"model": "local-dir:/m", "min_percentile": 30}}
    assert names(percentile) == [["download", "features"], ["dedup"], ["clip_embed"], ["clip"], ["safety", "privacy"]]
    assert names(fixed, streaming=False) == [[s] for s in ("download", "features", "dedup", "clip_embed", "clip",
                                                           "safety", "privacy")]


def test_gpu_actors_keep_their_cpus_and_cpu_pools_grow_into_the_rest():
    node = Cluster(cpus=16, gpus=2, node_cpus=16)
    clip, safety, faces, task = split([Resources(4, 1, actors=2), Resources(4, actors=4), Resources(1, actors=16),
                                       Resources(1)], node, gpu_actor_cpus=3)
    assert clip == Resources(num_cpus=3, num_gpus=1, actors=2)  # a fixed pool, started first
    # 16 - 2 x 3 = 10 CPUs left: the pools start with one actor each and grow, leaving one for tasks
    assert safety == Resources(num_cpus=4, actors=1, min_actors=1)
    assert faces == Resources(num_cpus=1, actors=5, min_actors=1) and task == Resources(1)


def test_gpu_stages_of_one_segment_share_each_gpu():
    node = Cluster(cpus=8, gpus=1, node_cpus=8)
    clip, toxicity, task = split([Resources(4, 1, actors=1), Resources(4, 1, actors=1), Resources(1)], node)
    assert clip == toxicity == Resources(num_cpus=2, num_gpus=0.5, actors=1)
    assert task == Resources(1)


def test_a_small_machine_fits_one_actor_of_every_pool_and_a_task():
    laptop = Cluster(cpus=2, gpus=0, node_cpus=2)
    shares = split([Resources(2, actors=1), Resources(1), Resources(2, actors=1), Resources(1, actors=2)], laptop)
    clip, task, safety, faces = shares
    # the pools' first actors share one CPU in proportion, each task holds as much of one as they do
    assert (clip.num_cpus, safety.num_cpus, faces.num_cpus, task.num_cpus) == (0.4, 0.4, 0.2, 0.2)
    assert [r.min_actors for r in shares] == [1, None, 1, 1] and faces.actors == 2
    # grown to their largest, the pools still leave a task its CPU
    assert sum(r.num_cpus * r.actors for r in shares if r.actors) + task.num_cpus <= 2


def test_a_stage_alone_gets_what_it_asked_for():
    assert split([Resources(8, actors=2)], Cluster(16, 0, 8)) == [Resources(8, actors=2)]
