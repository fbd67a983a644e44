"""The ledger (DESIGN A.4): one row per input row with the stage, reason and scores that decided it."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmcurate.algos.parallel import Tasks, runner
from mmcurate.engine import atomic
from mmcurate.engine.rundir import INGEST, RunDir
from mmcurate.schemas import columns as C
from mmcurate.schemas.errors import LedgerError
from mmcurate.stages import origin_columns
from mmcurate.stages.base import Stage
from mmcurate.storage import paths

_DECISION = [C.UID, C.ROW, C.STATUS, C.REASON, C.DETAIL]


def sample_key(rows: np.ndarray, seed: int) -> np.ndarray:
    """A fixed pseudo-random order of row numbers (splitmix64 of row + seed): samples that are
    reproducible and found batch by batch."""
    x = rows.astype(np.uint64) + np.uint64(seed) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def score_fields(stages: Sequence[Stage]) -> list[pa.Field]:
    """Every score field the stages compute, in stage order."""
    return [f for stage in stages for f in stage.score_fields()]


def ledger_shard(run_dir: RunDir, shard: int, stages: Sequence[Stage]) -> pa.Table:
    """The ledger rows of one shard: the first stage that did not keep a row decides it."""
    base = run_dir.read_shard(INGEST, shard)
    n = base.num_rows
    status = base[C.STATUS].to_pylist()
    reason = base[C.REASON].to_pylist()
    detail = base[C.DETAIL].to_pylist()
    stage = [None if s == C.KEPT else INGEST for s in status]
    position = {row: i for i, row in enumerate(base[C.ROW].to_pylist())}
    scores: dict[str, list] = {}
    for st in stages:
        out = _decisions(run_dir, st, shard)
        idx = [position[r] for r in out[C.ROW].to_pylist()]
        for i, s, r, d in zip(idx, out[C.STATUS].to_pylist(), out[C.REASON].to_pylist(), out[C.DETAIL].to_pylist()):
            if s != C.KEPT:
                status[i], stage[i], reason[i], detail[i] = s, st.name, r, d
            elif d is not None and status[i] == C.KEPT:  # kept but modified: say so
                detail[i] = d if detail[i] is None else f"{detail[i]}; {d}"
        for name in st.score_columns:
            column = scores.setdefault(name, [None] * n)
            if name not in out.column_names:  # a shard written before the stage scored it: null
                continue
            for i, v in zip(idx, out[name].to_pylist()):
                column[i] = v
    fields = score_fields(stages)
    struct = pa.StructArray.from_arrays(
        [pa.array(scores.get(f.name, [None] * n), f.type) for f in fields], fields=fields
    ) if fields else pa.nulls(n, pa.struct([]))
    origin = origin_columns(stages)
    table = pa.table(
        {
            C.UID: base[C.UID],
            C.ROW: base[C.ROW],
            C.SOURCE: base[C.SOURCE],
            C.SOURCE_LINE: base[C.SOURCE_LINE],
            C.URL: base[C.URL],
            C.CAPTION: base[C.CAPTION],
            **{name: base[name] for name in origin},
            C.STATUS: pa.array(status, pa.string()),
            C.STAGE: pa.array(stage, pa.string()),
            C.REASON: pa.array(reason, pa.string()),
            C.DETAIL: pa.array(detail, pa.string()),
            C.SCORES: struct,
        }
    )
    return table.cast(C.ledger_schema(fields, origin))


def _decisions(run_dir: RunDir, stage: Stage, shard: int) -> pa.Table:
    """A stage's decisions and scores on one shard; of a shard written by an earlier version, the
    score columns it has (download_attempts came with --retry-failed)."""
    wanted = _DECISION + list(stage.score_columns)
    try:
        return run_dir.read_shard(stage.name, shard, columns=wanted)
    except pa.ArrowInvalid:
        names = set(paths.parquet_file(run_dir.shard_file(stage.name, shard)).schema_arrow.names)
        return run_dir.read_shard(stage.name, shard, columns=[c for c in wanted if c in names])


def layout(shards: int, rows: int, shard_size: int, part_rows: int) -> list[range] | None:
    """None: the ledger is one file (a run of at most `part_rows` rows). Otherwise the parts, each
    a run of consecutive shards of at most `part_rows` rows (at least one shard)."""
    if rows <= part_rows:
        return None
    per = max(1, part_rows // shard_size)
    return [range(a, min(a + per, shards)) for a in range(0, shards, per)]


def write_ledger_file(run_dir: RunDir, stages: Sequence[Stage], shards: range, target: Path,
                      index: Path | None = None) -> dict:
    """Write the ledger rows of `shards` (one row group per shard) and, given `index`, their
    (uid, row) sorted by uid; return the file's aggregate: first row, rows, rows per status.
    Memory: one shard's rows, plus the part's uids and rows for the index."""
    schema = C.ledger_schema(score_fields(stages), origin_columns(stages))
    agg: dict = {"shards": [shards.start, shards.stop], "first_row": None, "rows": 0, **{s: 0 for s in C.STATUSES}}
    keys: list[pa.Table] = []

    def write(tmp) -> None:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for shard in shards:
                table = ledger_shard(run_dir, shard, stages)
                _count(agg, table[C.ROW].to_numpy(), table[C.STATUS], f"shard {shard}")
                writer.write_table(table)
                if index is not None:
                    keys.append(table.select([C.UID, C.ROW]))

    atomic.write_with(target, write)
    if index is not None:
        table = pa.concat_tables(keys) if keys else pa.table({C.UID: pa.array([], pa.string()), C.ROW: pa.array([], pa.int64())})
        atomic.write_with(index, lambda tmp: pq.write_table(table.sort_by(C.UID), tmp, compression="zstd",
                                                            row_group_size=INDEX_GROUP_ROWS))
    return agg


def _count(agg: dict, rows: np.ndarray, status: pa.ChunkedArray | pa.Array, where: str) -> None:
    """Add rows that must continue the aggregate's rows without a gap, and their statuses."""
    first = agg["first_row"] if agg["first_row"] is not None else (int(rows[0]) if len(rows) else None)
    nxt = (first or 0) + agg["rows"]
    if len(rows) and not np.array_equal(rows, np.arange(nxt, nxt + len(rows))):
        raise LedgerError(f"{where}: ledger rows are not contiguous from row {nxt}")
    agg["first_row"] = first
    agg["rows"] += len(rows)
    for value in pc.value_counts(status).to_pylist():
        if value["values"] not in C.STATUSES:
            raise LedgerError(f"{where}: ledger holds unknown status {value['values']!r}")
        agg[value["values"]] += value["counts"]


INDEX_GROUP_ROWS = 65_536


def _write_one(shared: tuple, part: tuple[int, range]) -> dict:
    """A worker task: one part of the ledger and its uid index."""
    run_dir, stages, ledger_root, index_root = shared
    k, shards = part
    agg = write_ledger_file(run_dir, stages, shards, run_dir.ledger_part(k, ledger_root), run_dir.ledger_index_part(k, index_root))
    return {"part": k, **agg}


def build_ledger(run_dir: RunDir, stages: Sequence[Stage], part_rows: int = 2_000_000,
                 tasks: Callable[[], Tasks] | None = None) -> dict[str, int]:
    """Write the ledger and check the invariant from its files' aggregates (O(files) on the driver).

    A run of at most `part_rows` rows gets one file, written here shard by shard (bounded memory).
    A larger one gets a directory of parts written by worker tasks (`tasks()`), each with a uid
    index beside it (`ledger_index/`) so that `audit --uid` reads a row group, not the ledger.
    """
    done = json.loads(run_dir.ingest_done().read_text())
    expected, shards = done["rows"], done["shards"]
    parts = layout(shards, expected, done["input"]["shard_size"], part_rows)
    if parts is None:
        if run_dir.remote:  # parts of an earlier build: a store keeps them beside the new object
            atomic.remove(run_dir.ledger)
        agg = write_ledger_file(run_dir, stages, range(shards), run_dir.ledger)
        atomic.remove(run_dir.ledger_index)
        return check_aggregates([agg], expected)
    with atomic.atomic_folder(run_dir.ledger_index) as index_root, atomic.atomic_folder(run_dir.ledger) as ledger_root:
        aggs = runner(tasks, len(parts)).parallel(_write_one, list(enumerate(parts)), (run_dir, list(stages), ledger_root, index_root))
        counts = check_aggregates(aggs, expected)
        atomic.write_json(run_dir.ledger_parts(index_root), {"rows": expected, "parts": aggs})
    return counts


def check_aggregates(aggs: list[dict], expected_rows: int) -> dict[str, int]:
    """rows in input = kept + dropped + failed, one ledger row per input row; else LedgerError.

    From each file's aggregate (its first row, rows and rows per status, checked row by row where
    it was written): the files' rows must be 0 .. expected_rows - 1 in order, which also proves
    none is missing or repeated."""
    counts = {s: 0 for s in C.STATUSES}
    seen = 0
    for agg in aggs:
        if agg["rows"] and agg["first_row"] != seen:
            raise LedgerError(f"ledger invariant broken: rows are not 0..{expected_rows - 1} in order near row {seen}")
        seen += agg["rows"]
        for s in C.STATUSES:
            counts[s] += agg[s]
    if sum(counts.values()) != expected_rows or seen != expected_rows:
        raise LedgerError(
            f"ledger invariant broken: {expected_rows} input rows but ledger has {seen} rows, "
            f"kept {counts[C.KEPT]} + dropped {counts[C.DROPPED]} + failed {counts[C.FAILED]}"
        )
    return {"rows": expected_rows, **counts}


def file_aggregate(path: Path) -> dict:
    """A written ledger file's aggregate, read back batch by batch (memory does not grow with it)."""
    agg: dict = {"first_row": None, "rows": 0, **{s: 0 for s in C.STATUSES}}
    for batch in paths.parquet_file(path).iter_batches(batch_size=65_536, columns=[C.ROW, C.STATUS]):
        _count(agg, batch.column(0).to_numpy(zero_copy_only=False), batch.column(1), f"ledger invariant broken: {path.name}")
    return agg


def check_invariant(run_dir: RunDir, expected_rows: int) -> dict[str, int]:
    """The invariant re-checked from the ledger's files themselves, whichever form it has."""
    return check_aggregates([file_aggregate(p) for p in run_dir.ledger_files()], expected_rows)
