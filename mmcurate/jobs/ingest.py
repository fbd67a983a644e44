"""Ingest as tasks: the input's units (files, parquet row groups) read and checked in parallel into
chunks numbered from 0, then cut into the run's shards, numbered across the files in sorted order
from the units' row counts, exactly as one reader going through the files would number them.

The input's fingerprint comes from per-file records (name, stat, content hash), hashed once when
the run dir is made and, on resume, re-read only for a file whose stat changed.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from mmcurate import ingest
from mmcurate.algos.parallel import Tasks, runner
from mmcurate.engine import atomic
from mmcurate.engine.rundir import INGEST, RunDir
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import InputConfig
from mmcurate.storage import paths

FINGERPRINT_VERSION = 2


def _hash(cwd: str, path: str) -> dict:
    record = ingest.file_record(paths.located(cwd, path))
    return {**record, "path": path}


def fingerprint_input(files: list[Path], done: dict | None, tasks: Callable[[], Tasks] | None = None
                      ) -> tuple[str, list[dict] | None]:
    """The input's fingerprint and its per-file records.

    A run dir made by this version recorded each file's stat and hash: a file whose stat is the
    same is not read again; one whose stat changed is hashed again (its content decides). A run
    dir made before the records gets the old whole-input hash (and keeps it, so that its stages'
    fingerprints stay what they were)."""
    if done is not None and done.get("fingerprint_version") != FINGERPRINT_VERSION:
        return ingest.fingerprint(files), None
    known = {r["path"]: r for r in (done or {}).get("input_files", [])}
    stale = [str(p) for p in files if not _unchanged(known.get(str(p)), p)]
    cwd = os.getcwd()
    hashed = dict(zip(stale, runner(tasks, len(stale)).parallel(_hash, stale, cwd)))
    records = [hashed.get(str(p)) or known[str(p)] for p in files]
    return ingest.combined_fingerprint(records), records


def _unchanged(record: dict | None, path: Path) -> bool:
    if record is None:
        return False
    try:
        stat = ingest.stat_of(path)
    except OSError:
        return False
    return all(record.get(k) == v for k, v in stat.items())


def _read_unit(shared: tuple, item: tuple[int, ingest.Unit]) -> dict:
    """A task: one unit read and checked into chunks of `shard_size` rows numbered from 0."""
    run_dir, cfg, cwd = shared
    k, unit = item

    def write(chunk: int, table: pa.Table) -> None:
        atomic.write_parquet(run_dir.ingest_piece(k, chunk), table)

    buffer = ingest.ShardBuffer(cfg.shard_size, write, cfg.max_caption_chars, cfg.max_url_chars, source=unit.path,
                                pool=cfg.pool, documents=cfg.documents)
    groups = list(unit.row_groups) if unit.row_groups is not None else None
    path = paths.located(cwd, unit.path)
    if cfg.documents:
        return {"unit": k, **_read_documents(run_dir, cfg, k, unit, path, groups, buffer)}
    for raw in ingest.read_rows(path, cfg, groups, unit.first_line, unit.members, unit.path):
        buffer.add(raw)
    buffer.flush()
    return {"unit": k, "rows": buffer.rows, C.FAILED: buffer.failed}


def _read_documents(run_dir: RunDir, cfg: InputConfig, k: int, unit: ingest.Unit, path, groups: list[int] | None,
                    buffer: ingest.ShardBuffer) -> dict:
    """A unit of interleaved documents: their image rows into `buffer`, the documents themselves into
    the documents table, both numbered from 0 (`_number_documents` makes them the run's numbers)."""
    chunk, docs, counts = 0, [], {"documents": 0, "documents_failed": 0}

    def flush() -> None:
        nonlocal chunk, docs
        if docs:
            atomic.write_parquet(run_dir.documents_file(k, chunk), pa.Table.from_pylist(docs, schema=C.DOCUMENTS_SCHEMA))
            chunk, docs = chunk + 1, []

    for doc in ingest.read_documents(path, cfg, groups, unit.first_line, unit.path):
        docs.append({**doc.values, C.FIRST_ROW: buffer.rows})
        counts["documents"] += 1
        counts["documents_failed"] += doc.values[C.STATUS] == C.FAILED
        for raw in doc.images:
            buffer.add(raw)
        if len(docs) >= cfg.shard_size:
            flush()
    flush()
    buffer.flush()
    return {"rows": buffer.rows, C.FAILED: buffer.failed, **counts, "chunks": chunk}


def _number_documents(shared: tuple, item: tuple[int, int, int, int]) -> None:
    """A task: a unit's documents renumbered from the run's count of documents and rows before it."""
    run_dir = shared
    k, chunks, documents, rows = item
    for chunk in range(chunks):
        path = run_dir.documents_file(k, chunk)
        table = paths.read_table(path)
        for name, offset in ((C.DOCUMENT, documents), (C.FIRST_ROW, rows)):
            moved = pc.add(table[name], pa.scalar(offset, pa.int64()))
            table = table.set_column(table.schema.get_field_index(name), name, moved)
        atomic.write_parquet(path, table.cast(C.DOCUMENTS_SCHEMA))


def _write_shards(shared: tuple, item: list[tuple[int, list[tuple[int, int, int, int, int]]]]) -> list[dict]:
    """A task: shards put together from their pieces (unit, chunk, first, last, row offset)."""
    run_dir, schema, doc_starts = shared
    out, cached = [], (None, None)
    for shard, pieces in item:
        parts = []
        for unit, chunk, lo, hi, offset in pieces:
            path = run_dir.ingest_piece(unit, chunk)
            if cached[0] != path:
                cached = (path, paths.read_table(path))
            piece = cached[1].slice(lo, hi - lo)
            moves = ((C.ROW, offset), (C.DOCUMENT, doc_starts[unit])) if doc_starts else ((C.ROW, offset),)
            for name, by in moves:  # the unit's numbers made the run's
                moved = pc.add(piece[name], pa.scalar(by, pa.int64()))
                piece = piece.set_column(piece.schema.get_field_index(name), name, moved)
            parts.append(piece)
        table = pa.concat_tables(parts).combine_chunks().cast(schema)
        atomic.write_parquet(run_dir.shard_file(INGEST, shard), table)
        failed = pc.sum(pc.equal(table[C.STATUS], C.FAILED)).as_py() or 0
        out.append({"stage": INGEST, "shard": shard, "rows_in": table.num_rows, C.FAILED: failed,
                    C.KEPT: table.num_rows - failed})
    return out


def ingest_input(run_dir: RunDir, cfg: InputConfig, files: list[Path], rows_per_unit: int,
                 tasks: Callable[[], Tasks] | None = None, on_shard: Callable[[dict], None] = lambda s: None) -> dict:
    """Read `files` into the run's ingest shards; returns shards, rows and failed rows."""
    atomic.remove(run_dir.ingest_pieces)
    atomic.remove(run_dir.documents_table)
    units = ingest.units(files, rows_per_unit, cfg)
    counts = sorted(runner(tasks, len(units)).parallel(_read_unit, list(enumerate(units)), (run_dir, cfg, os.getcwd())),
                    key=lambda c: c["unit"])
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c["rows"])
    total, size = starts[-1], cfg.shard_size
    plan = []
    for shard in range((total + size - 1) // size):
        lo, hi = shard * size, min(total, (shard + 1) * size)
        pieces, row = [], lo
        unit = bisect.bisect_right(starts, row) - 1
        while row < hi:
            while starts[unit + 1] <= row:  # units without rows
                unit += 1
            local = row - starts[unit]
            chunk = local // size
            end = min(hi, starts[unit + 1], starts[unit] + (chunk + 1) * size)
            pieces.append((unit, chunk, local - chunk * size, end - starts[unit] - chunk * size, starts[unit]))
            row = end
        plan.append((shard, pieces))
    per_task = max(1, rows_per_unit // size)
    batches = [plan[i:i + per_task] for i in range(0, len(plan), per_task)]
    doc_starts = [0]
    for c in counts if cfg.documents else ():
        doc_starts.append(doc_starts[-1] + c["documents"])
    shared = (run_dir, C.ingest_schema(cfg.pool, cfg.documents), doc_starts[:-1])
    for stats in (s for batch in runner(tasks, len(batches)).parallel(_write_shards, batches, shared) for s in batch):
        on_shard(stats)
    atomic.remove(run_dir.ingest_pieces)
    out = {"shards": len(plan), "rows": total, C.FAILED: sum(c[C.FAILED] for c in counts)}
    if cfg.documents:
        todo = [(c["unit"], c["chunks"], doc_starts[i], starts[i]) for i, c in enumerate(counts) if c["chunks"]]
        runner(tasks, len(todo)).parallel(_number_documents, todo, run_dir)
        out.update(documents=doc_starts[-1], documents_failed=sum(c["documents_failed"] for c in counts))
    return out
