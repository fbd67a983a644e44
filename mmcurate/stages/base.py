"""What a stage is: plain Python over Arrow tables, with no Ray in sight.

A stage receives the rows of one shard that are still alive (kept by every earlier stage) and
returns one output row per input row, in the same order: identity, a decision (status, reason,
detail), its scores and any data columns it produces. It says what it found as `Verdicts` (the
filter contract, `filters/base.py`) and `assemble` here does the bookkeeping for every stage
alike. The engine around it does the rest: atomic shard files, stats, resume, ledger.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmcurate.algos.parallel import Parallel, Tasks, serial
from mmcurate.filters import filters_for
from mmcurate.filters.base import Filter, Histogram, Threshold, Verdicts
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config, without_loopback_ports


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs; `actors` > 0 means an actor pool of up to that size
    (of exactly that size unless `min_actors` says where it may start: the engine's split)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    actors: int = 0
    min_actors: int | None = None


@dataclass(frozen=True)
class Cluster:
    """What the cluster a run uses offers: total CPUs and GPUs, and CPUs of its largest node."""

    cpus: int = 1
    gpus: int = 0
    node_cpus: int = 1


@dataclass
class ShardContext:
    """What the engine tells a stage about the shard it processes (set before `process`)."""

    shard: int = 0
    cache_file: Path | None = None  # a file of the stage's own for this shard (synthesis: teacher answers)
    side_tables: dict[str, pa.Table] = field(default_factory=dict)  # stored beside the shard by the engine
    # written into the shard's stats; `incomplete`: work that failed for a reason a rerun may not
    # meet (a teacher that was down): the next run does the shard again
    stats: dict = field(default_factory=dict)


class Stage:
    """Base of per-shard stages; a subclass sets the class attributes and `judge`."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    output_schema: pa.Schema
    score_columns: tuple[str, ...] = ()  # copied into the ledger's scores struct
    may_be_incomplete: ClassVar[bool] = False  # its shards' stats may say `incomplete` (ShardContext.stats)
    data_columns: tuple[str, ...] = ()  # flow on to later stages and exports
    # data columns of earlier stages this stage reads (None: all); url and caption always come
    input_columns: tuple[str, ...] | None = None
    optional_inputs: tuple[str, ...] = ()  # of those, the ones shards of earlier versions may lack
    ingest_columns: tuple[str, ...] = ()  # ingest's columns it reads beside uid, row, url and caption
    origin_columns: tuple[str, ...] = ()  # ingest's columns naming a row's origin, for the ledger and exports
    settings: tuple[str, ...] = ()  # dotted config keys it decides by (audit --explain shows them)
    thresholds: tuple[Threshold, ...] = ()  # its reasons a score threshold decides (export --where)
    decides_samples: ClassVar[bool] = True  # False: it only adds data (synthesis); a sample need not pass it
    histograms: tuple[Histogram, ...] = ()  # scores the report draws

    def __init__(self, config: Config):
        self.config = config
        self.context = ShardContext()

    @classmethod
    def enabled(cls, config: Config) -> bool:
        """Whether this stage runs under `config`."""
        return True

    def prepare(self) -> dict:
        """Driver-side checks before any worker starts (find and hash model weights).

        Returns what the manifest records about the stage's models ({} when it has none);
        raises ConfigError (ModelError for models) when the configuration cannot work.
        """
        return {}

    def check_scale(self, rows: int) -> None:
        """Raises ConfigError, naming the key to change, when a run of `rows` input rows (more than
        any stage sees) would cost more than the engine allows; before anything runs."""

    def config_sections(self) -> dict:
        """The configuration this stage's output depends on (its part of the fingerprint)."""
        return {}

    def fingerprint(self, upstream: str) -> str:
        """A hash of everything that determines this stage's output, chained to its upstream."""
        data = {"stage": self.name, "version": self.version, "config": without_loopback_ports(self.config_sections()),
                "up": upstream}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def resources(self, cluster: Cluster) -> Resources:
        """What one worker needs, on `cluster`."""
        return Resources()

    def setup(self) -> None:
        """Load models or open clients; called once per worker before `process`."""

    def judge(self, rows: pa.Table) -> Verdicts | list[Verdicts]:
        """What the stage finds about every row of `rows`, as verdicts (earlier ones win)."""
        raise NotImplementedError

    def process(self, rows: pa.Table) -> pa.Table:
        """Decide about every row of `rows`; return one row per input row, same order."""
        return assemble(self, rows, self.judge(rows))

    def score_fields(self) -> list[pa.Field]:
        """The Arrow fields of this stage's scores, for the ledger."""
        return [self.output_schema.field(name) for name in self.score_columns]


class ShardIO(Protocol):
    """A global stage's access to the run, from any worker (the engine's, picklable)."""

    shards: int  # shards in the run
    pending: list[int]  # the shards whose output this run writes
    rows: int  # alive rows the stage sees (from the stats before it): what partitions are sized by
    rows_per_partition: int  # how many rows one task of a partitioned decision holds (engine.rows_per_partition)

    def read(self, shard: int) -> pa.Table:
        """The shard's alive rows: uid, row and the stage's `input_columns`."""
        ...

    def write(self, shard: int, out: pa.Table, started: float) -> dict:
        """Store the stage's output for a shard (begun at epoch `started`); its stats."""
        ...


class GlobalStage(Stage):
    """A stage whose decisions depend on other rows of the run (deduplication, percentiles).

    `decide_shards(io, tasks)` makes its output for the pending shards as a dataflow of tasks
    (`algos.parallel.Tasks`) and returns references to lists of their stats. By default one task
    reads every shard's alive rows, `decide`s on them concatenated (one output row per input row,
    in order) and splits the result back into shard files; a stage that must scale past one
    worker's memory partitions the work itself. `parallel(fn, items, shared)` runs
    `fn(shared, item)` for each item, on Ray workers when a run provides it.
    """

    def decide_shards(self, io: ShardIO, tasks: Tasks) -> list:
        return [tasks.submit(decide_in_one_task, self, io, tasks)]

    def judge(self, rows: pa.Table, parallel: Parallel) -> Verdicts | list[Verdicts]:
        raise NotImplementedError

    def is_global(self) -> bool:
        """Whether this configuration needs every row at once; if not, the engine runs the stage
        shard by shard (`process`), streaming with its neighbours, with the same output."""
        return True

    def decide(self, rows: pa.Table, parallel: Parallel) -> pa.Table:
        return assemble(self, rows, self.judge(rows, parallel))

    def process(self, rows: pa.Table) -> pa.Table:
        return self.decide(rows, serial)


def decide_in_one_task(stage: GlobalStage, io: ShardIO, tasks: Tasks) -> list[dict]:
    """Every shard's alive rows in one table, `decide`d at once; the pending shards written."""
    started = time.time()
    stage.setup()
    parts = [io.read(shard) for shard in range(io.shards)]
    # a shard with no rows left has nothing to fix an embedding's width by: it joins no table
    rows = pa.concat_tables([p for p in parts if p.num_rows] or parts[:1])
    out = stage.decide(rows, tasks.parallel)
    if out.num_rows != rows.num_rows or not out[C.ROW].equals(rows[C.ROW]):
        raise RuntimeError(f"stage {stage.name!r} returned {out.num_rows} rows for {rows.num_rows} input rows")
    stats, offset, todo = [], 0, set(io.pending)
    for shard, part in enumerate(parts):
        if shard in todo:
            stats.append(io.write(shard, out.slice(offset, part.num_rows), started))
        offset += part.num_rows
    return stats


class FilterStage(Stage):
    """A per-shard stage made of the filters whose `stage` is its name (found in mmcurate/filters).

    Its output holds its own scores (`fields`, measured by `measure`), its filters' fields (those
    of a filter that is off only where it has `columns_when_off`, as null), then its `data_fields`.
    Filters run in their order, each seeing the scores of those before it; what they say is
    assembled as every stage's verdicts are.
    """

    fields: ClassVar[tuple[pa.Field, ...]] = ()  # scores the stage measures itself, before its filters
    data_fields: ClassVar[tuple[pa.Field, ...]] = ()  # data columns it writes (as exported)

    def __init__(self, config: Config):
        super().__init__(config)
        self.filters: list[Filter] = [cls(config) for cls in filters_for(self.name)]
        self.active = [f for f in self.filters if f.enabled]
        cls = type(self)
        shown = [f for f in self.filters if f.enabled or f.columns_when_off]
        score_fields = [*cls.fields, *(f for filt in shown for f in filt.fields)]
        self.output_schema = pa.schema(C.IDENTITY_FIELDS + C.DECISION_FIELDS + score_fields + list(cls.data_fields))
        self.score_columns = tuple(f.name for f in score_fields)
        needs = [*(cls.input_columns or ()), *(c for filt in self.filters for c in filt.needs)]
        self.input_columns = tuple(dict.fromkeys(needs))
        self.settings = (*cls.settings, *(key for f in self.active for key in f.explained_by()))
        self.thresholds = (*cls.thresholds, *(t for f in self.filters for t in f.thresholds))
        self.histograms = (*cls.histograms, *(h for f in self.filters for h in f.histograms))

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return any(f(config).enabled for f in filters_for(cls.name))

    def config_sections(self) -> dict:
        out: dict = {}
        for f in self.filters:
            out.update(f.fingerprint())
        return out

    def prepare(self) -> dict:
        info = {}
        for f in self.active:
            found = f.prepare()
            if found:
                info[f.name] = found
        return info

    def setup(self) -> None:
        for f in self.active:
            f.setup()

    def measure(self, rows: pa.Table) -> dict[str, Sequence]:
        """The stage's own scores (its `fields`), computed before any filter runs."""
        return {}

    def judge(self, rows: pa.Table) -> list[Verdicts]:
        self.setup()
        verdicts = [Verdicts(scores=self.measure(rows))]
        seen = _with_columns(rows, verdicts[0].scores)
        for f in self.active:
            verdicts.append(f.apply(seen))
            seen = _with_columns(seen, verdicts[-1].scores)
        return verdicts


def _with_columns(rows: pa.Table, columns: dict[str, Any]) -> pa.Table:
    """`rows` with these columns added, as computed (no cast: later filters see exact values)."""
    for name, values in columns.items():
        array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
        if name in rows.column_names:
            rows = rows.set_column(rows.column_names.index(name), name, array)
        else:
            rows = rows.append_column(name, array)
    return rows


def _objects(values: Any, n: int) -> np.ndarray:
    """Per-row values as a numpy object array of length n (None where missing)."""
    if values is None:
        return np.full(n, None, object)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.to_numpy(zero_copy_only=False).astype(object)
    out = np.empty(n, object)
    out[:] = list(values)
    return out


def _array(values: Any, type_: pa.DataType) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values if values.type == type_ else values.cast(type_)
    return pa.array(values, type_)


_STATUS_CODES = [C.KEPT, C.DROPPED, C.FAILED]


def assemble(stage: Stage, rows: pa.Table, verdicts: Verdicts | Sequence[Verdicts]) -> pa.Table:
    """The stage's output table from what its checks said, in the stage's output schema.

    A row some check could not judge fails, with the first such check's reason; otherwise the
    first check that objects drops it; otherwise it is kept, and the notes of the checks that
    changed it (faces blurred) are its detail. Columns come from the verdicts, data columns the
    stage passes on come from `rows` unless a check rewrote them, anything else is null.
    """
    verdicts = [verdicts] if isinstance(verdicts, Verdicts) else list(verdicts)
    n = rows.num_rows
    winner = np.full(n, -1, np.int64)
    failed = np.zeros(n, bool)
    reason = np.full(n, None, object)
    detail = np.full(n, None, object)
    objections = []  # (check, rows it objects to, whether those are failures, its reasons)
    for j, v in enumerate(verdicts):
        if v.reasons is not None:
            reasons = v.reasons if isinstance(v.reasons, (pa.Array, pa.ChunkedArray)) else pa.array(v.reasons, pa.string())
            objects = pc.is_valid(reasons).to_numpy(zero_copy_only=False)
            objections.append((j, objects, np.broadcast_to(np.asarray(v.failed, bool), (n,)), reasons))
    for failures in (True, False):  # failures first, then objections, each in check order
        for j, objects, as_failure, reasons in objections:
            hit = (winner < 0) & objects & (as_failure == failures)
            if hit.any():
                winner[hit], failed[hit] = j, failures
                reason[hit] = _objects(reasons, n)[hit]
                detail[hit] = _objects(verdicts[j].details, n)[hit]
    kept = winner < 0
    notes = [_objects(v.notes, n) for v in verdicts if v.notes is not None]
    if notes:
        for i in np.flatnonzero(kept):
            said = [str(x[i]) for x in notes if x[i] is not None]
            detail[i] = "; ".join(said) if said else None

    supplied: dict[str, Any] = {}
    for j, v in enumerate(verdicts):
        supplied.update(v.scores)
        supplied.update(v.data)
        for column, values in v.actions.items():
            done = np.full(n, None, object)
            done[kept] = _objects(values, n)[kept]
            done[(winner == j) & ~failed] = "dropped"
            supplied[column] = done.tolist()
    codes = np.where(kept, 0, np.where(failed, 2, 1)).astype(np.int8)
    arrays = {
        C.UID: rows.column(C.UID).combine_chunks() if n else pa.array([], pa.string()),
        C.ROW: rows.column(C.ROW).combine_chunks() if n else pa.array([], pa.int64()),
        C.STATUS: pa.DictionaryArray.from_arrays(pa.array(codes), _STATUS_CODES).cast(pa.string()),
        C.REASON: pa.array(reason, pa.string()),
        C.DETAIL: pa.array(detail, pa.string()),
    }
    schema = stage.output_schema
    out = []
    for f in schema:
        if f.name in arrays:
            out.append(_array(arrays[f.name], f.type))
        elif f.name in supplied:
            out.append(_array(supplied[f.name], f.type))
        elif f.name in stage.data_columns and f.name in rows.column_names:
            out.append(_array(rows.column(f.name), f.type))
        else:
            out.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(out, schema=schema)
