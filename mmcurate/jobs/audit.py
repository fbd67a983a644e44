"""Questions auditors ask of the ledger: why was this sample dropped, what did this filter drop."""

from __future__ import annotations

import polars as pl

from mmcurate.errors import ConfigError
from mmcurate.jobs.rundir import RunDir
from mmcurate.schemas import columns as C


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
