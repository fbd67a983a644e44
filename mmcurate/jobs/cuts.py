"""Cuts of a finished run for the pools people already have: the kept samples repacked into files
of N samples each (`--samples-per-shard`), and the kept rows' ids alone (`--format ids`), which a
researcher reshards their own pool with (DataComp's resharder reads the `.npy`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmcurate.engine import atomic
from mmcurate.schemas import columns as C

KEYS_FILE = "keys.parquet"  # beside repacked shards: each sample's key, ids and the file holding it
IDS_NPY, IDS_PARQUET = "ids.npy", "ids.parquet"
UID_DTYPE = np.dtype("u8,u8")  # DataComp's: a 128-bit uid as two unsigned 64-bit halves
_ID_COLUMNS = (C.KEY, C.UID, C.ROW, C.SOURCE_KEY, C.SOURCE_UID, C.URL)


def repack(shards: Iterable[pa.Table], write_file: Callable[[int, pa.Table], str], out_dir: Path,
           samples_per_shard: int) -> int:
    """The samples of `shards` (each run shard's, in row order) as files of exactly
    `samples_per_shard` (the last smaller; `write_file(number, table)` writes one and names it),
    with `keys.parquet` mapping each key to its ids and file. Holds one file's samples and one run
    shard's at a time."""
    state = {"pending": [], "held": 0, "files": 0, "count": 0, "writer": None}

    def flush(n: int, tmp) -> None:
        table = pa.concat_tables(state["pending"]).combine_chunks()
        part, rest = table.slice(0, n), table.slice(n)
        name = write_file(state["files"], part)
        ids = part.select([c for c in _ID_COLUMNS if c in part.column_names])
        ids = ids.append_column("file", pa.array([name] * part.num_rows, pa.string()))
        if state["writer"] is None:  # the keys go out file by file: memory does not grow with the export
            state["writer"] = pq.ParquetWriter(tmp, ids.schema, compression="zstd")
        state["writer"].write_table(ids.cast(state["writer"].schema))
        state.update(files=state["files"] + 1, count=state["count"] + part.num_rows,
                     pending=[rest] if rest.num_rows else [], held=rest.num_rows)

    def write(tmp) -> None:
        try:
            for table in shards:
                if not table.num_rows:
                    continue
                if state["pending"] and table.schema != state["pending"][0].schema:
                    table = table.cast(state["pending"][0].schema)  # a shard's nulls may have typed a score differently
                state["pending"].append(table)
                state["held"] += table.num_rows
                while state["held"] >= samples_per_shard:
                    flush(samples_per_shard, tmp)
            if state["held"]:
                flush(state["held"], tmp)
        finally:
            if state["writer"] is not None:
                state["writer"].close()
            else:
                pq.write_table(pa.table({c: pa.array([], pa.string()) for c in (C.KEY, C.UID, "file")}), tmp)

    atomic.write_with(out_dir / KEYS_FILE, write)
    return state["count"]


def export_ids(shards: Iterable[pa.Table], out_dir: Path) -> int:
    """`ids.parquet` (key, uid, row and, for a pool, its key, uid and url, in row order) of the rows
    of `shards` (each run shard's rows an export writes, read without images); for a pool whose
    samples carry 128-bit uids, `ids.npy` too: those uids sorted, dtype u8,u8."""
    schema = None
    hi, lo = [], []
    count = 0

    def write(tmp) -> None:
        nonlocal schema, count
        writer = None
        try:
            for table in shards:
                table = table.select([c for c in _ID_COLUMNS if c in table.column_names])
                if writer is None:
                    schema = table.schema
                    writer = pq.ParquetWriter(tmp, schema, compression="zstd")
                writer.write_table(table.cast(schema))
                count += table.num_rows
                if C.SOURCE_UID in table.column_names:
                    h, low = split_uids(table[C.SOURCE_UID])
                    hi.append(h)
                    lo.append(low)
        finally:
            if writer is not None:
                writer.close()
            else:
                pq.write_table(pa.table({c: pa.array([], pa.string()) for c in (C.KEY, C.UID)}), tmp)

    atomic.write_with(out_dir / IDS_PARQUET, write)
    if hi:
        h, low = np.concatenate(hi), np.concatenate(lo)
        order = np.lexsort((low, h))
        uids = np.empty(len(order), UID_DTYPE)
        uids["f0"], uids["f1"] = h[order], low[order]

        def save(tmp) -> None:
            with open(tmp, "wb") as f:  # a path would get ".npy" added to it
                np.save(f, uids)

        atomic.write_with(out_dir / IDS_NPY, save)
    return count


def split_uids(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """128-bit hex uids as their high and low 64-bit halves (rows without one, or with another
    form of id, are left out: the parquet file still names them)."""
    values = pc.fill_null(column, "").to_pylist()
    good = [u for u in values if len(u) == 32 and all(ch in "0123456789abcdefABCDEF" for ch in u)]
    return (np.array([int(u[:16], 16) for u in good], np.uint64),
            np.array([int(u[16:], 16) for u in good], np.uint64))
