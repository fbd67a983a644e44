"""How a global algorithm spreads its work over the cluster, without importing Ray.

Two shapes, each with an in-process version (tests, small runs) and a Ray one (`engine/executor`):

- `parallel(fn, items, shared)` returns [fn(shared, item) for item in items], computed anywhere
  (`serial` here; the engine's `map_tasks` puts `shared` in the object store once).
- `Tasks`: futures for a dataflow whose data never passes through the driver. `submit(fn, *args,
  returns=k)` runs fn(*args) as a task and hands back a reference (or k, when fn returns k parts:
  a hash partitioning); references given as arguments arrive as their values, references inside
  a list stay references, which a task fetches with `get` one at a time (so it holds one part, not
  all). The driver keeps only references and the few small values it `get`s itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

Parallel = Callable[[Callable[[Any, Any], Any], list, Any], list]


def serial(fn: Callable[[Any, Any], Any], items: list, shared: Any) -> list:
    """The in-process `parallel`."""
    return [fn(shared, item) for item in items]


class Tasks(Protocol):
    def submit(self, fn: Callable[..., Any], *args: Any, returns: int = 1) -> Any: ...
    def get(self, ref: Any) -> Any: ...
    def wait(self, refs: list) -> None: ...  # until these are computed, fetching nothing
    def parallel(self, fn: Callable[[Any, Any], Any], items: list, shared: Any) -> list: ...


def submit_parts(tasks: Tasks, n: int, fn: Callable[..., list], *args: Any) -> list:
    """fn(*args) -> a list of n parts (a hash partitioning), submitted as one task: n references."""
    return [tasks.submit(_first, fn, *args)] if n == 1 else tasks.submit(fn, *args, returns=n)


def _first(fn: Callable[..., list], *args: Any) -> Any:
    return fn(*args)[0]


def runner(tasks: Callable[[], Tasks] | None, items: int) -> Tasks:
    """`tasks()` (the cluster's) when there is more than one item, else in this process: a run
    with one thing to do never starts Ray for it."""
    return tasks() if tasks is not None and items > 1 else SerialTasks()


class SerialTasks:
    """`Tasks` in this process: a reference is its value."""

    def submit(self, fn: Callable[..., Any], *args: Any, returns: int = 1) -> Any:
        out = fn(*args)
        if returns == 1:
            return out
        out = list(out)
        if len(out) != returns:
            raise RuntimeError(f"{fn.__name__} returned {len(out)} parts, not {returns}")
        return out

    def get(self, ref: Any) -> Any:
        return ref

    def wait(self, refs: list) -> None:
        pass

    def parallel(self, fn: Callable[[Any, Any], Any], items: list, shared: Any) -> list:
        return serial(fn, items, shared)
