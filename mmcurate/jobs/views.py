"""Reading a shard as later stages see it: the rows every earlier stage kept, with their data."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from mmcurate.jobs.rundir import INGEST, RunDir
from mmcurate.pipelines.stage import Stage
from mmcurate.schemas import columns as C


def alive_rows(
    run_dir: RunDir, shard: int, stages: Sequence[Stage], columns: Sequence[str] | None = None
) -> pa.Table:
    """Rows of `shard` that ingest and every stage in `stages` kept, with the stages' data columns
    (only those named in `columns`, when given: only they are read from disk)."""
    table = run_dir.read_shard(INGEST, shard, columns=[C.UID, C.ROW, C.URL, C.CAPTION, C.STATUS])
    table = table.filter(pc.equal(table[C.STATUS], C.KEPT)).select([C.UID, C.ROW, C.URL, C.CAPTION])
    for stage in stages:
        wanted = [c for c in stage.data_columns if columns is None or c in columns]
        out = run_dir.read_shard(stage.name, shard, columns=[C.ROW, C.STATUS] + wanted)
        check_aligned(stage.name, table, out)
        mask = pc.equal(out[C.STATUS], C.KEPT)
        table = table.filter(mask)
        kept = out.filter(mask)
        for name in wanted:
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), kept.schema.field(name), kept[name])
            else:
                table = table.append_column(kept.schema.field(name), kept[name])
    return table


def check_aligned(stage: str, rows: pa.Table, out: pa.Table) -> None:
    """A stage's output must hold exactly its input rows, in order."""
    if out.num_rows != rows.num_rows or not out[C.ROW].equals(rows[C.ROW]):
        raise RuntimeError(
            f"stage {stage!r} returned {out.num_rows} rows for {rows.num_rows} input rows (or reordered them)"
        )
