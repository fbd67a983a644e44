"""Questions auditors ask of the ledger: why was this sample dropped, what did this filter drop."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmcurate.engine.rundir import RunDir
from mmcurate.jobs.ledger import sample_key
from mmcurate.jobs.manifest import stages_of
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import lookup
from mmcurate.schemas.errors import ConfigError
from mmcurate.storage import paths


def query_ledger(
    run_dir: RunDir,
    *,
    stage: str | None = None,
    reason: str | None = None,
    uid: str | None = None,
    status: str | None = None,
    limit: int | None = 20,
) -> pl.DataFrame:
    """Ledger rows matching every given filter, in input order, scores flattened to columns.

    The ledger's files are in row order, so the first `limit` matches are read and no more; a uid
    is looked up in the uid index (a ledger in parts) and read from the row groups that hold it."""
    files = _files(run_dir)
    if uid is not None:
        frame = pl.from_arrow(ledger_rows(run_dir, uid_rows(run_dir, uid))).lazy()
    else:
        frame = paths.scan_parquet(files)
    for column, value in ((C.STAGE, stage), (C.REASON, reason), (C.UID, uid), (C.STATUS, status)):
        if value is not None:
            frame = frame.filter(pl.col(column) == value)
    if limit is not None:
        frame = frame.head(limit)
    return frame.collect().sort(C.ROW).unnest(C.SCORES)


def sample_ledger(run_dir: RunDir, n: int, seed: int, **filters) -> pl.DataFrame:
    """A reproducible random sample of `n` ledger rows matching `filters` (same run, seed: same rows).

    The rows with the `n` smallest seeded keys (`ledger.sample_key`), found batch by batch, so
    memory holds n rows whatever the ledger's size."""
    wanted = {k: v for k, v in filters.items() if v is not None}
    if C.UID in wanted:  # a few rows, found through the index
        frame = query_ledger(run_dir, limit=None, **filters)
        return frame[np.sort(np.argsort(sample_key(frame[C.ROW].to_numpy(), seed), kind="stable")[:n])]
    best = np.empty(0, np.uint64), np.empty(0, np.int64)
    columns = [C.ROW, *wanted]
    for path in _files(run_dir):
        for batch in paths.parquet_file(path).iter_batches(batch_size=65_536, columns=columns):
            mask = None
            for k, v in wanted.items():
                hit = pc.equal(batch.column(k), v)
                mask = hit if mask is None else pc.and_(mask, hit)
            rows = batch.column(0).to_numpy(zero_copy_only=False)
            if mask is not None:
                rows = rows[pc.fill_null(mask, False).to_numpy(zero_copy_only=False)]
            keys = np.concatenate([best[0], sample_key(rows, seed)])
            rows = np.concatenate([best[1], rows])
            order = np.argsort(keys, kind="stable")[:n]
            best = keys[order], rows[order]
    return pl.from_arrow(ledger_rows(run_dir, best[1].tolist())).sort(C.ROW).unnest(C.SCORES)


def _files(run_dir: RunDir) -> list:
    files = run_dir.ledger_files()
    if not files:
        raise ConfigError(f"{run_dir.root}: no ledger.parquet yet (has the run finished?)")
    return files


def _leaf(pf: pq.ParquetFile, name: str) -> int:
    meta = pf.metadata.schema
    return next(i for i in range(len(meta)) if meta.column(i).path == name)


def _groups(pf: pq.ParquetFile, name: str, lo, hi):
    """The row groups of `pf` whose statistics for column `name` may hold values in [lo, hi]."""
    leaf = _leaf(pf, name)
    for g in range(pf.metadata.num_row_groups):
        st = pf.metadata.row_group(g).column(leaf).statistics
        if st is None or not st.has_min_max or (st.min <= hi and lo <= st.max):
            yield g


def ledger_rows(run_dir: RunDir, rows: list[int]) -> pa.Table:
    """The ledger rows with these row numbers, reading only the row groups whose `row` statistics
    can hold them (one shard's rows each)."""
    wanted = pa.array(sorted(set(rows)), pa.int64())
    out, schema = [], None
    for path in _files(run_dir):
        pf = paths.parquet_file(path)
        schema = pf.schema_arrow
        if not len(wanted):
            break
        for g in _groups(pf, C.ROW, pc.min(wanted).as_py(), pc.max(wanted).as_py()):
            table = pf.read_row_group(g)
            table = table.filter(pc.is_in(table[C.ROW], wanted))
            if table.num_rows:
                out.append(table)
    return pa.concat_tables(out) if out else schema.empty_table()


def uid_rows(run_dir: RunDir, uid: str) -> list[int]:
    """The rows with `uid`: from the uid index's row groups that can hold it (a ledger in parts),
    or a scan of the uid column (one file, at most `engine.ledger_part_rows` rows)."""
    index = sorted(run_dir.ledger_index.glob("part-*.parquet")) if run_dir.ledger.is_dir() else []
    found: list[int] = []
    for path in index or _files(run_dir):
        pf = paths.parquet_file(path)
        groups = _groups(pf, C.UID, uid, uid) if index else range(pf.metadata.num_row_groups)
        for g in groups:
            t = pf.read_row_group(g, columns=[C.UID, C.ROW])
            found += t.filter(pc.equal(t[C.UID], uid))[C.ROW].to_pylist()
    return found


def explain(run_dir: RunDir, uid: str) -> list[dict]:
    """Every stage's decision, values and settings for each ledger row with `uid`.

    A uid names an (url, caption) pair; the same pair given twice has two rows, both explained.
    The settings shown beside each stage are those it declares it decides by.
    """
    rows = query_ledger(run_dir, uid=uid, limit=None)
    if rows.height == 0:
        raise ConfigError(f"--explain {uid}: no ledger row has this uid")
    manifest = run_dir.read_manifest()
    config = manifest["config"]
    shard_size = config["input"]["shard_size"]
    stages = [s for s in manifest.get("stage_order", []) if not s.startswith("export-")]
    settings = {s.name: s.settings for s in stages_of(manifest, str(run_dir.manifest))}
    out = []
    for row in rows.to_dicts():
        shard = row[C.ROW] // shard_size
        steps = []
        for name in stages:
            path = run_dir.shard_file(name, shard)
            if not path.exists():
                continue
            table = _read(path)
            hit = table.filter(pc.equal(table[C.ROW], row[C.ROW]))
            if hit.num_rows == 0:  # an earlier stage had already decided
                continue
            record = hit.slice(0, 1).to_pylist()[0]
            values = {k: v for k, v in record.items()
                      if k not in (C.UID, C.ROW, C.STATUS, C.REASON, C.DETAIL, C.SOURCE, C.SOURCE_LINE, C.URL, C.CAPTION)
                      and not isinstance(v, bytes) and not (isinstance(v, list) and len(v) > 16)}
            steps.append({
                "stage": name, "status": record[C.STATUS], "reason": record[C.REASON], "detail": record[C.DETAIL],
                "values": values, "settings": {k: lookup(config, k) for k in settings.get(name, ())},
            })
        explained = {**{k: row[k] for k in (C.UID, C.ROW, C.URL, C.CAPTION, C.STATUS, C.STAGE, C.REASON, C.DETAIL)},
                     "decided_by": row[C.STAGE] or "kept by every stage", "steps": steps}
        records = run_dir.instruction_file(shard)
        if records.exists():  # the teacher's records for this sample: why each was kept, rejected or failed
            table = paths.read_table(records, columns=[C.ROW, "task", C.STATUS, C.REASON, "problems", "flags",
                                                    "template_id", "template_version", "request_hash"])
            hit = table.filter(pc.equal(table[C.ROW], row[C.ROW])).to_pylist()
            explained["instructions"] = [{k: r[k] for k in ("task", C.STATUS, C.REASON, "problems", "flags",
                                                            "template_id", "template_version", "request_hash")}
                                         for r in hit]
        out.append(explained)
    return out


def _read(path):
    schema = paths.parquet_file(path).schema_arrow
    # image bytes and embeddings are not explanations: leave them on disk
    bulky = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list, pa.types.is_binary)
    keep = [f.name for f in schema if not (f.name == C.IMAGE or any(is_(f.type) for is_ in bulky))]
    return paths.read_table(path, columns=keep)
