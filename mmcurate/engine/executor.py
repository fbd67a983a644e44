"""The Ray adapter, the one module that imports ray: start or attach, map shard tasks over the cluster.

Everything else in mmcurate is plain Python over Arrow tables. A shard task is any picklable
callable `task(shard) -> stats` with an optional `setup()`; here it becomes a Ray Data
`map_batches` over shard ids, as stateless tasks or as an actor pool that loads its model once.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import socket
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from mmcurate.schemas.errors import ConfigError
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
            _check_address(address)
            try:
                ray.init(address=address, **kwargs)
            except ConnectionError as err:
                raise ConfigError(f"--address {address}: no Ray cluster found ({err}); start one (`ray start --head`) "
                                  "or run without --address (Ray starts embedded)") from None
        else:
            # "local": always a new embedded Ray, even when a cluster already runs on this machine
            # (ray.init() would otherwise attach to it and refuse num_cpus). Usage reports off
            # unless the user turns them on (Ray's dashboard process still asks the cloud-metadata
            # addresses which cloud it is on, whatever this says: tests/storage/conftest.py)
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(address="local", num_cpus=os.cpu_count() or 1, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # mmcurate splits the cluster among a segment's stages itself (engine/plan.py); Ray Data's own
    # per-operator reservations on top held a latency-bound download to one task beside three pools
    ctx.op_resource_reservation_enabled = False
    return started


def _check_address(address: str) -> None:
    """A HOST:PORT (or ray://HOST:PORT) address that nothing answers at exits 2 at once, not after
    Ray's minute of retries."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)/?", address)
    if match is None:
        return  # auto, or a form Ray resolves itself
    try:
        socket.create_connection((match[1], int(match[2])), timeout=5).close()
    except OSError as err:
        raise ConfigError(f"--address {address}: nothing answers at {match[1]}:{match[2]} ({err.strerror or err}); "
                          "start the cluster there (`ray start --head`) or run without --address") from None


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


class ShardFailure:
    """A shard a step could not do: the exception as it was raised (when it pickles), and its traceback."""

    def __init__(self, step: int, shard: int, error: BaseException, trace: str):
        self.step, self.shard, self.error, self.trace = step, shard, error, trace


def _pack(err: BaseException) -> bytes:
    trace = "".join(traceback.format_exception(err))
    try:
        body = pickle.dumps(err)
        pickle.loads(body)
    except Exception:  # an exception that does not survive pickling comes back as its text
        body = pickle.dumps(RuntimeError(f"{type(err).__name__}: {err}"))
    return pickle.dumps((body, trace))


class _Step:
    """One step of a stream: the shard task on every shard of a batch that no earlier step failed.

    A failure is caught and passed on as data, so that one bad shard stops neither the shards
    beside it nor the pipeline; the driver raises once every healthy shard is through. Stats
    travel as JSON text (for the driver's progress), errors as pickled bytes.
    """

    def __init__(self, task: ShardCallable, index: int):
        self.task, self.index, self.broken = task, index, None
        try:
            task.setup()
        except Exception as err:  # a model that cannot load: every shard of this step fails with it
            self.broken = _pack(err)

    def __call__(self, batch: dict) -> dict:
        stats, errors, steps = [], [], []
        before = batch.get("step", np.full(len(batch["shard"]), -1))
        for shard, error, step in zip(batch["shard"], batch["error"], before):
            if not error:
                step, error = self.index, self.broken
            if not error:
                try:
                    stats.append(json.dumps(self.task(int(shard))))
                    errors.append(b"")
                    steps.append(step)
                    continue
                except Exception as err:
                    error = _pack(err)
            stats.append("")
            errors.append(error)
            steps.append(step)  # the step that failed, carried past the later ones
        return {"shard": batch["shard"], "error": np.array(errors, dtype=object), "step": np.array(steps, np.int64),
                "stats": np.array(stats, dtype=object)}


def _run_step(batch: dict, task: ShardCallable, index: int) -> dict:
    return _Step(task, index)(batch)


def stream(steps: Sequence[tuple[ShardCallable, Resources]], shards: Iterable[int],
           on_done: Callable[[dict], None] = lambda stats: None) -> list[ShardFailure]:
    """Every shard through every step, as one streaming Ray Data pipeline: shard k is in step 2
    while shard k+1 is in step 1. Only shard ids, stats and errors travel between steps (the
    rows stay in the run dir's files), so the object store holds a few hundred bytes a shard.

    `on_done(stats)` gets the last step's stats of each shard as it comes out; the shards some
    step failed come back as `ShardFailure`s, after every other shard is through.
    """
    import ray.data

    items = [{"shard": s, "error": b""} for s in shards]
    if not items:
        return []
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    for index, (task, resources) in enumerate(steps):
        common: dict[str, Any] = dict(batch_size=1, batch_format="numpy", num_cpus=resources.num_cpus)
        if resources.num_gpus:
            common["num_gpus"] = resources.num_gpus
        if resources.actors:
            size = resources.actors if resources.min_actors is None else (resources.min_actors, resources.actors)
            ds = ds.map_batches(_Step, fn_constructor_args=(task, index), concurrency=size, **common)
        else:
            ds = ds.map_batches(_run_step, fn_args=(task, index), **common)
    failures = []
    for batch in ds.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=0):
        for shard, step, error, stats in zip(batch["shard"], batch["step"], batch["error"], batch["stats"]):
            if error:
                body, trace = pickle.loads(error)
                failures.append(ShardFailure(int(step), int(shard), pickle.loads(body), trace))
            else:
                on_done(json.loads(stats))
    return sorted(failures, key=lambda f: (f.step, f.shard))


def map_shards(
    task: ShardCallable,
    shards: Iterable[int],
    resources: Resources,
    on_done: Callable[[dict], None],
) -> None:
    """Run `task` on every shard on the cluster; call `on_done(stats)` as each one finishes.
    Raises the first shard's error once the others are done."""
    failures = stream([(task, resources)], shards, on_done)
    if failures:
        raise failures[0].error


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


class RayTasks:
    """`algos.parallel.Tasks` on Ray: each `submit` one task (retried if its node dies), each
    reference an object in the cluster's store. Picklable, so tasks fetch the parts they are handed."""

    _remote: dict = {}

    def submit(self, fn: Callable[..., Any], *args: Any, returns: int = 1) -> Any:
        import ray

        key = (fn, returns)
        if key not in self._remote:
            self._remote[key] = ray.remote(num_cpus=1, max_retries=3, num_returns=returns)(fn)
        return self._remote[key].remote(*args)

    def get(self, ref: Any) -> Any:
        import ray
        from ray.exceptions import RayTaskError

        from mmcurate.schemas.errors import MmcurateError

        try:
            return ray.get(ref)
        except RayTaskError as err:
            if isinstance(err.cause, MmcurateError):
                raise err.cause from None
            raise

    def wait(self, refs: list) -> None:
        import ray

        if refs:
            ray.wait(refs, num_returns=len(refs), fetch_local=False)

    def parallel(self, fn: Callable[[Any, Any], Any], items: list, shared: Any) -> list:
        return map_tasks(fn, items, shared)


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

    def stream(self, steps: Sequence[tuple[ShardCallable, Resources]], shards: Iterable[int],
               on_done: Callable[[dict], None] = lambda stats: None) -> list[ShardFailure]:
        self.ensure()
        return stream(steps, shards, on_done)

    def tasks(self) -> RayTasks:
        self.ensure()
        return RayTasks()

    def run_remote(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.ensure()
        return run_remote(fn, *args)

    def close(self) -> None:
        if self._started:
            stop()
            self._started = False
        self._ready = False
