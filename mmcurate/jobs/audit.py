"""Questions auditors ask of the ledger: why was this sample dropped, what did this filter drop."""

from __future__ import annotations

import polars as pl
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmcurate.engine.rundir import RunDir
from mmcurate.jobs.manifest import stages_of
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import lookup
from mmcurate.schemas.errors import ConfigError


def query_ledger(
    run_dir: RunDir,
    *,
    stage: str | None = None,
    reason: str | None = None,
    uid: str | None = None,
    status: str | None = None,
    limit: int | None = 20,
) -> pl.DataFrame:
    """Ledger rows matching every given filter, in input order, scores flattened to columns."""
    if not run_dir.ledger.exists():
        raise ConfigError(f"{run_dir.root}: no ledger.parquet yet (has the run finished?)")
    frame = pl.scan_parquet(run_dir.ledger)
    for column, value in ((C.STAGE, stage), (C.REASON, reason), (C.UID, uid), (C.STATUS, status)):
        if value is not None:
            frame = frame.filter(pl.col(column) == value)
    frame = frame.sort(C.ROW)
    if limit is not None:
        frame = frame.head(limit)
    return frame.collect().unnest(C.SCORES)


def sample_ledger(run_dir: RunDir, n: int, seed: int, **filters) -> pl.DataFrame:
    """A reproducible random sample of `n` ledger rows matching `filters` (same run, seed: same rows)."""
    frame = query_ledger(run_dir, limit=None, **filters)
    if frame.height <= n:
        return frame
    return frame.sample(n, seed=seed).sort(C.ROW)


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
            table = pq.read_table(records, columns=[C.ROW, "task", C.STATUS, C.REASON, "problems", "flags",
                                                    "template_id", "template_version", "request_hash"])
            hit = table.filter(pc.equal(table[C.ROW], row[C.ROW])).to_pylist()
            explained["instructions"] = [{k: r[k] for k in ("task", C.STATUS, C.REASON, "problems", "flags",
                                                            "template_id", "template_version", "request_hash")}
                                         for r in hit]
        out.append(explained)
    return out


def _read(path):
    schema = pq.read_schema(path)
    # image bytes and embeddings are not explanations: leave them on disk
    keep = [f.name for f in schema if not (f.name == C.IMAGE or str(f.type).startswith(("list", "binary")))]
    return pq.read_table(path, columns=keep)
