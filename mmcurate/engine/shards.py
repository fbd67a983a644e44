"""Stage shards on disk: reading a shard as a stage sees it, and writing a stage's output and stats.

A stage's shard appears whole or not at all: its side tables, then its output, then its stats
file (the resume marker), each atomically.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from mmcurate.algos.embeddings import as_fixed
from mmcurate.engine import atomic
from mmcurate.engine.rundir import INGEST, RunDir
from mmcurate.schemas import columns as C
from mmcurate.stages.base import Stage


def alive_rows(
    run_dir: RunDir, shard: int, stages: Sequence[Stage], columns: Sequence[str] | None = None,
    ingest_columns: Sequence[str] = (), optional: Sequence[str] = (),
) -> pa.Table:
    """Rows of `shard` that ingest and every stage in `stages` kept, with the stages' data columns
    (only those named in `columns`, when given: only they are read from disk), and any of
    ingest's `ingest_columns` (a pool's: where each image lies). Columns named in `optional` are
    left out where a stage's shard, written by an earlier version, does not have them. A column
    is read from the last of `stages` that writes it (whose value it has), from no other."""
    first = [C.UID, C.ROW, C.URL, C.CAPTION, *ingest_columns]
    table = run_dir.read_shard(INGEST, shard, columns=[*first, C.STATUS])
    table = table.filter(pc.equal(table[C.STATUS], C.KEPT)).select(first)
    writer = {column: stage.name for stage in stages for column in stage.data_columns}
    for stage in stages:
        wanted = [c for c in stage.data_columns if (columns is None or c in columns) and writer[c] == stage.name]
        try:
            out = run_dir.read_shard(stage.name, shard, columns=[C.ROW, C.STATUS] + wanted)
        except pa.ArrowInvalid:
            if not set(wanted) & set(optional):
                raise
            wanted = [c for c in wanted if c not in optional]
            out = run_dir.read_shard(stage.name, shard, columns=[C.ROW, C.STATUS] + wanted)
        check_aligned(stage.name, table, out)
        mask = pc.equal(out[C.STATUS], C.KEPT)
        table = table.filter(mask)
        kept = out.filter(mask)
        for name in wanted:
            column = as_fixed(kept[name]) if name == C.CLIP_EMBEDDING else kept[name]  # older shards: a list
            field = kept.schema.field(name).with_type(column.type)
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), field, column)
            else:
                table = table.append_column(field, column)
    return table


def check_aligned(stage: str, rows: pa.Table, out: pa.Table) -> None:
    """A stage's output must hold exactly its input rows, in order."""
    if out.num_rows != rows.num_rows or not out[C.ROW].equals(rows[C.ROW]):
        raise RuntimeError(
            f"stage {stage!r} returned {out.num_rows} rows for {rows.num_rows} input rows (or reordered them)"
        )


def utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")


def shard_stats(stage: str, shard: int, out: pa.Table, seconds: float, started: float | None = None) -> dict:
    """The statistics of one stage on one shard (also its resume marker): counts per status and
    reason, and when it was begun and finished (UTC; a global stage's shards share its decision's)."""
    status = Counter(out[C.STATUS].to_pylist())
    reasons = Counter(r for r in out[C.REASON].to_pylist() if r is not None)
    return {
        "stage": stage,
        "shard": shard,
        "rows_in": out.num_rows,
        C.KEPT: status[C.KEPT],
        C.DROPPED: status[C.DROPPED],
        C.FAILED: status[C.FAILED],
        "reasons": dict(sorted(reasons.items())),
        "seconds": round(seconds, 4),
        "started": utc(time.time() - seconds if started is None else started),
        "finished": utc(time.time()),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


def write_stage_shard(run_dir: RunDir, stage: Stage, shard: int, out: pa.Table, seconds: float,
                      side_tables: dict[str, pa.Table] | None = None, started: float | None = None,
                      extra: dict | None = None) -> dict:
    """Write a stage's side tables and output for one shard, then its stats (the resume marker,
    with the stage's `extra` fields)."""
    bad = set(out[C.STATUS].to_pylist()) - set(C.STATUSES)
    if bad:
        raise RuntimeError(f"stage {stage.name!r} produced unknown statuses {sorted(bad)}")
    for name, table in (side_tables or {}).items():
        atomic.write_parquet(run_dir.side_file(stage.name, name, shard), table)
    atomic.write_parquet(run_dir.shard_file(stage.name, shard), out.cast(stage.output_schema))
    stats = {**shard_stats(stage.name, shard, out, seconds, started), **(extra or {})}
    atomic.write_json(run_dir.stats_file(stage.name, shard), stats)
    return stats


@dataclass
class GlobalShards:
    """`stages.base.ShardIO` over the run dir at `root`: what a global stage's tasks read and write."""

    root: str
    stage: Stage
    upstream: list[Stage]
    shards: int
    pending: list[int]
    rows: int
    rows_per_partition: int

    def read(self, shard: int) -> pa.Table:
        # only the columns the stage names, not the captions and URLs every row carries
        part = alive_rows(RunDir.at(self.root), shard, self.upstream, self.stage.input_columns)
        keep = {C.UID, C.ROW, *(self.stage.input_columns or ())}
        return part.select([c for c in part.column_names if c in keep])

    def write(self, shard: int, out: pa.Table, started: float) -> dict:
        seconds = (time.time() - started) / max(self.shards, 1)  # the decision's time, divided evenly
        return write_stage_shard(RunDir.at(self.root), self.stage, shard, out, seconds, started=started)


def alive_count(run_dir: RunDir, upstream: Sequence[Stage], shards: int) -> int:
    """Rows alive after the last of `upstream` (from its stats), or every ingested row."""
    if upstream:
        return sum(run_dir.read_stats(upstream[-1].name, s)[C.KEPT] for s in range(shards))
    return int(json.loads(run_dir.ingest_done().read_text()).get("rows", 0))
