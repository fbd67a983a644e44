"""What a per-shard stage is: plain Python over Arrow tables, with no Ray in sight.

A stage receives the rows of one shard that are still alive (kept by every earlier stage) and
returns one output row per input row, in the same order: identity, a decision (status, reason,
detail), its scores and any data columns it produces. The run around it does the bookkeeping:
atomic shard files, stats, resume, ledger.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs; `actors` > 0 means an actor pool of that size."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    actors: int = 0


@dataclass(frozen=True)
class Cluster:
    """What the cluster a run uses offers: total CPUs and GPUs, and CPUs of its largest node."""

    cpus: int = 1
    gpus: int = 0
    node_cpus: int = 1


class Stage:
    """Base class of per-shard stages; subclasses set the class attributes and `process`."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    output_schema: ClassVar[pa.Schema]
    score_columns: ClassVar[tuple[str, ...]] = ()  # copied into the ledger's scores struct
    data_columns: ClassVar[tuple[str, ...]] = ()  # flow on to later stages and exports
    # data columns of earlier stages this stage reads (None: all); url and caption always come
    input_columns: ClassVar[tuple[str, ...] | None] = None
    # set by the run before `process`: the run dir's root and the shard (for stages that keep
    # files of their own beside their shard output, such as synthesis's records and cache)
    run_root: str = "."
    shard: int = 0

    def __init__(self, config: Config):
        self.config = config

    @classmethod
    def enabled(cls, config: Config) -> bool:
        """Whether this stage runs under `config`."""
        return True

    def prepare(self) -> dict:
        """Driver-side checks before any worker starts (find and hash model weights).

        Returns what the manifest records about the stage's models ({} when it has none);
        raises ConfigError when the configuration cannot work.
        """
        return {}

    def config_sections(self) -> dict:
        """The configuration this stage's output depends on (its part of the fingerprint)."""
        return {}

    def fingerprint(self, upstream: str) -> str:
        """A hash of everything that determines this stage's output, chained to its upstream."""
        data = {"stage": self.name, "version": self.version, "config": self.config_sections(), "up": upstream}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def resources(self, cluster: Cluster) -> Resources:
        """What one worker needs, on `cluster`."""
        return Resources()

    def setup(self) -> None:
        """Load models or open clients; called once per worker before `process`."""

    def process(self, rows: pa.Table) -> pa.Table:
        """Decide about every row of `rows`; return one row per input row, same order."""
        raise NotImplementedError

    def score_fields(self) -> list[pa.Field]:
        """The Arrow fields of this stage's scores, for the ledger."""
        return [self.output_schema.field(name) for name in self.score_columns]


# parallel(fn, items, shared) -> [fn(shared, item) for item in items], possibly on other workers
Parallel = Callable[[Callable[[Any, Any], Any], list, Any], list]


class GlobalStage(Stage):
    """A stage that must see every alive row of the run at once (deduplication, percentiles).

    `decide` gets the alive rows of all shards concatenated and returns one output row per
    input row, in order; the run splits the result back into shard files. `parallel(fn, items,
    shared)` runs `fn(shared, item)` for each item, on Ray workers when a run provides it.
    """

    def decide(self, rows: pa.Table, parallel: Parallel) -> pa.Table:
        raise NotImplementedError

    def process(self, rows: pa.Table) -> pa.Table:
        return self.decide(rows, serial)


def serial(fn, items, shared):
    """The in-process `parallel`: tests and small runs."""
    return [fn(shared, item) for item in items]


def decisions(
    rows: pa.Table, status: list[str], reason: list[str | None], detail: list[str | None]
) -> dict[str, pa.Array]:
    """The identity and decision columns of a stage's output, as a dict of arrays."""
    return {
        C.UID: rows.column(C.UID).combine_chunks() if rows.num_rows else pa.array([], pa.string()),
        C.ROW: rows.column(C.ROW).combine_chunks() if rows.num_rows else pa.array([], pa.int64()),
        C.STATUS: pa.array(status, pa.string()),
        C.REASON: pa.array(reason, pa.string()),
        C.DETAIL: pa.array(detail, pa.string()),
    }
