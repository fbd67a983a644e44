"""The ledger (DESIGN A.4): one row per input row with the stage, reason and scores that decided it."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmcurate.engine import atomic
from mmcurate.engine.rundir import INGEST, RunDir
from mmcurate.schemas import columns as C
from mmcurate.schemas.errors import LedgerError
from mmcurate.stages.base import Stage

_DECISION = [C.UID, C.ROW, C.STATUS, C.REASON, C.DETAIL]


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
        out = run_dir.read_shard(st.name, shard, columns=_DECISION + list(st.score_columns))
        idx = [position[r] for r in out[C.ROW].to_pylist()]
        for i, s, r, d in zip(idx, out[C.STATUS].to_pylist(), out[C.REASON].to_pylist(), out[C.DETAIL].to_pylist()):
            if s != C.KEPT:
                status[i], stage[i], reason[i], detail[i] = s, st.name, r, d
            elif d is not None and status[i] == C.KEPT:  # kept but modified: say so
                detail[i] = d if detail[i] is None else f"{detail[i]}; {d}"
        for name in st.score_columns:
            column = scores.setdefault(name, [None] * n)
            for i, v in zip(idx, out[name].to_pylist()):
                column[i] = v
    fields = score_fields(stages)
    struct = pa.StructArray.from_arrays(
        [pa.array(scores.get(f.name, [None] * n), f.type) for f in fields], fields=fields
    ) if fields else pa.nulls(n, pa.struct([]))
    table = pa.table(
        {
            C.UID: base[C.UID],
            C.ROW: base[C.ROW],
            C.SOURCE: base[C.SOURCE],
            C.SOURCE_LINE: base[C.SOURCE_LINE],
            C.URL: base[C.URL],
            C.CAPTION: base[C.CAPTION],
            C.STATUS: pa.array(status, pa.string()),
            C.STAGE: pa.array(stage, pa.string()),
            C.REASON: pa.array(reason, pa.string()),
            C.DETAIL: pa.array(detail, pa.string()),
            C.SCORES: struct,
        }
    )
    return table.cast(C.ledger_schema(fields))


def build_ledger(run_dir: RunDir, stages: Sequence[Stage]) -> dict[str, int]:
    """Write ledger.parquet shard by shard (bounded memory) and check the invariant."""
    done = json.loads(run_dir.ingest_done().read_text())
    expected, shards = done["rows"], done["shards"]
    schema = C.ledger_schema(score_fields(stages))
    next_row = 0

    def write(tmp) -> None:
        nonlocal next_row
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for shard in range(shards):
                table = ledger_shard(run_dir, shard, stages)
                rows = table[C.ROW]
                if table.num_rows and (rows[0].as_py() != next_row or rows[-1].as_py() != next_row + table.num_rows - 1):
                    raise LedgerError(f"shard {shard}: ledger rows are not contiguous from row {next_row}")
                next_row += table.num_rows
                writer.write_table(table)

    atomic.write_with(run_dir.ledger, write)
    return check_invariant(run_dir, expected)


def check_invariant(run_dir: RunDir, expected_rows: int) -> dict[str, int]:
    """rows in input = kept + dropped + failed, one ledger row per input row; else LedgerError.

    Read batch by batch (memory does not grow with the run): the ledger's rows must be exactly
    0 .. expected_rows - 1 in order, which also proves none is missing or repeated.
    """
    counts = {s: 0 for s in C.STATUSES}
    seen = 0
    for batch in pq.ParquetFile(run_dir.ledger).iter_batches(batch_size=65_536, columns=[C.ROW, C.STATUS]):
        rows = batch.column(0).to_numpy(zero_copy_only=False)
        if len(rows) and not np.array_equal(rows, np.arange(seen, seen + len(rows))):
            raise LedgerError(f"ledger invariant broken: rows are not 0..{expected_rows - 1} in order near row {seen}")
        seen += len(rows)
        for value in pc.value_counts(batch.column(1)).to_pylist():
            if value["values"] not in counts:
                raise LedgerError(f"ledger holds unknown status {value['values']!r}")
            counts[value["values"]] += value["counts"]
    total = sum(counts.values())
    if total != expected_rows or seen != expected_rows:
        raise LedgerError(
            f"ledger invariant broken: {expected_rows} input rows but ledger has {seen} rows, "
            f"kept {counts[C.KEPT]} + dropped {counts[C.DROPPED]} + failed {counts[C.FAILED]}"
        )
    return {"rows": expected_rows, **counts}
