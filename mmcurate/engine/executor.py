"""The Ray adapter, the one module that imports ray: start or attach, map shard tasks over the cluster.

Everything else in mmcurate is plain Python over Arrow tables. A shard task is any picklable
callable `task(shard) -> stats` with an optional `setup()`; here it becomes a Ray Data
`map_batches` over shard ids, as stateless tasks or as an actor pool that loads its model once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from mmcurate.stages.base import Cluster, Resources

log = logging.getLogger(__name__)


class ShardCallable(Protocol):
    def setup(self) -> None: ...
    def __call__(self, shard: int) -> dict: ...


def start(address: str | None = None) -> bool:
    """Start Ray embedded (sized to this machine) or attach to `address`.

    Returns False when Ray was already initialised in this process (e.g. a notebook or a
    benchmark started it): the caller then leaves it running when done.
    """
    import ray
    import ray.data

    for name in ("ray.data", "ray._private.authentication"):
        logging.getLogger(name).setLevel(logging.ERROR)
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = dict(
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=True,
            configure_logging=True,
        )
        if address:
            ray.init(address=address, **kwargs)
        else:
            # "local": always a new embedded Ray, even when a cluster already runs on this machine
            # (ray.init() would otherwise attach to it and refuse num_cpus)
            ray.init(address="local", num_cpus=os.cpu_count() or 1, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return started


def cluster() -> Cluster:
    """The CPUs and GPUs of the cluster Ray is connected to."""
    import ray

    total = ray.cluster_resources()
    node_cpus = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return Cluster(
        cpus=int(total.get("CPU", 1)), gpus=int(total.get("GPU", 0)), node_cpus=int(max(node_cpus, default=1)) or 1
    )


def stop() -> None:
    """Disconnect from Ray (stops the embedded cluster)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _run_batch(batch: dict, task: ShardCallable) -> dict:
    task.setup()
    return {"stats": [json.dumps(task(int(s))) for s in batch["shard"]]}


class _ActorRunner:
    """An actor-pool member: the task's models load once, in the constructor."""

    def __init__(self, task: ShardCallable):
        self.task = task
        task.setup()

    def __call__(self, batch: dict) -> dict:
        return {"stats": [json.dumps(self.task(int(s))) for s in batch["shard"]]}


def map_shards(
    task: ShardCallable,
    shards: Iterable[int],
    resources: Resources,
    on_done: Callable[[dict], None],
) -> None:
    """Run `task` on every shard on the cluster; call `on_done(stats)` as each one finishes."""
    import ray.data

    items = [{"shard": s} for s in shards]
    if not items:
        return
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    common = dict(batch_size=1, batch_format="numpy", num_cpus=resources.num_cpus)
    if resources.num_gpus:
        common["num_gpus"] = resources.num_gpus
    if resources.actors:
        ds = ds.map_batches(_ActorRunner, fn_constructor_args=(task,), concurrency=resources.actors, **common)
    else:
        ds = ds.map_batches(_run_batch, fn_args=(task,), **common)
    for batch in ds.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=0):
        for text in batch["stats"]:
            on_done(json.loads(text))


def run_remote(fn: Callable[..., Any], *args: Any, num_cpus: float = 1.0) -> Any:
    """fn(*args) as one Ray task, on whichever node has room; retried if its node dies.

    An mmcurate error raised inside (a bad setting found only there) comes back as itself, so
    the command line can name the key and exit 2.
    """
    import ray
    from ray.exceptions import RayTaskError

    from mmcurate.schemas.errors import MmcurateError

    try:
        return ray.get(ray.remote(num_cpus=num_cpus, max_retries=3)(fn).remote(*args))
    except RayTaskError as err:
        if isinstance(err.cause, MmcurateError):
            raise err.cause from None
        raise


def _call(fn: Callable, shared: Any, item: Any) -> Any:
    return fn(shared, item)


def map_tasks(fn: Callable[[Any, Any], Any], items: list, shared: Any) -> list:
    """[fn(shared, item) for item in items] as Ray tasks; `shared` is put in the object store once."""
    import ray

    ref = ray.put(shared)
    remote = ray.remote(num_cpus=1)(_call)
    return ray.get([remote.remote(fn, ref, item) for item in items])


class RaySession:
    """Ray for one run: started (or attached to) on first use, so that a run with nothing left to do
    never starts it; stopped at the end only if this run started it."""

    def __init__(self, address: str | None = None):
        self.address = address
        self._ready = False
        self._started = False

    def ensure(self) -> None:
        if not self._ready:
            self._started = start(self.address)
            self._ready = True

    def cluster(self) -> Cluster:
        self.ensure()
        return cluster()

    def map_shards(self, task: ShardCallable, shards: Iterable[int], resources: Resources,
                   on_done: Callable[[dict], None]) -> None:
        self.ensure()
        map_shards(task, shards, resources, on_done)

    def run_remote(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.ensure()
        return run_remote(fn, *args)

    def close(self) -> None:
        if self._started:
            stop()
            self._started = False
        self._ready = False
