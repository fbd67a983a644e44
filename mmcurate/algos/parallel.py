"""How a global algorithm spreads independent work: `parallel(fn, items, shared)`.

It returns [fn(shared, item) for item in items], computed anywhere: `serial` in this process (tests,
small runs), or on Ray workers (the engine's `map_tasks`, which puts `shared` in the object store once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Parallel = Callable[[Callable[[Any, Any], Any], list, Any], list]


def serial(fn: Callable[[Any, Any], Any], items: list, shared: Any) -> list:
    """The in-process `parallel`."""
    return [fn(shared, item) for item in items]
