"""Exports of the kept samples: webdataset tars (img2dataset's layout) and parquet, one file per shard."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmcurate import atomic
from mmcurate.errors import ConfigError
from mmcurate.jobs.ledger import ledger_shard
from mmcurate.jobs.rundir import RunDir
from mmcurate.jobs.views import alive_rows
from mmcurate.pipelines.stage import Stage
from mmcurate.schemas import columns as C

FORMATS = ("webdataset", "parquet")
KEY = "key"
_EXT = {"webdataset": "tar", "parquet": "parquet"}


def sample_key(row: int) -> str:
    """The export key of a sample: its input row, zero-padded (unique even for repeated inputs)."""
    return f"{row:012d}"


def kept_samples(run_dir: RunDir, shard: int, stages: Sequence[Stage]) -> pa.Table:
    """The kept samples of one shard with their data columns and every score as a column."""
    rows = alive_rows(run_dir, shard, stages)
    # internal signals (dedup's colour grid, CLIP embeddings) stay out of exports: the image is
    # the only bytes; embeddings stay in stages/clip_embed/ for whoever wants them
    internal = [f.name for f in rows.schema
                if (pa.types.is_binary(f.type) and f.name != C.IMAGE) or pa.types.is_list(f.type)]
    rows = rows.drop_columns(internal)
    ledger = ledger_shard(run_dir, shard, stages)
    ledger = ledger.filter(pc.equal(ledger[C.STATUS], C.KEPT))
    if ledger.num_rows != rows.num_rows:
        raise RuntimeError(f"shard {shard}: ledger keeps {ledger.num_rows} rows, stages keep {rows.num_rows}")
    scores = ledger[C.SCORES].combine_chunks()
    table = rows.append_column(KEY, pa.array([sample_key(r) for r in rows[C.ROW].to_pylist()], pa.string()))
    table = table.append_column(C.DETAIL, ledger[C.DETAIL])
    for i, f in enumerate(scores.type):
        if f.name not in table.column_names:
            table = table.append_column(f, scores.field(i))
    return table


def _write_tar(path: Path, table: pa.Table) -> None:
    """A webdataset shard in img2dataset's layout, byte-for-byte reproducible."""
    meta_cols = [c for c in table.column_names if c != C.IMAGE]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for record in table.to_pylist():
            key = record[KEY]
            ext = record.get(C.IMAGE_FORMAT) or "jpg"
            meta = {c: record[c] for c in meta_cols}
            for name, data in (
                (f"{key}.{ext}", record[C.IMAGE]),
                (f"{key}.txt", (record[C.CAPTION] or "").encode("utf-8")),
                (f"{key}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")),
            ):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))


def export_shard(run_dir: RunDir, shard: int, stages: Sequence[Stage], fmt: str, out_dir: Path) -> int:
    """Write one shard's kept samples in `fmt` under `out_dir`; return how many (no file when none)."""
    table = kept_samples(run_dir, shard, stages)
    if table.num_rows == 0:
        return 0
    target = out_dir / f"{shard:06d}.{_EXT[fmt]}"
    if fmt == "webdataset":
        atomic.write_with(target, lambda tmp: _write_tar(tmp, table))
    elif fmt == "parquet":
        atomic.write_with(target, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    else:
        raise ConfigError(f"--format: unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
    return table.num_rows


@dataclass
class ExportTask:
    """A picklable shard task: export one shard into the run's shards/<fmt>/ folder."""

    root: str
    stages: list[Stage]
    fmt: str

    def setup(self) -> None:
        """Nothing to load."""

    def __call__(self, shard: int) -> dict:
        run_dir = RunDir(Path(self.root))
        marker = run_dir.stats_file(f"export-{self.fmt}", shard)
        if marker.exists():
            return json.loads(marker.read_text())
        count = export_shard(run_dir, shard, self.stages, self.fmt, run_dir.shards / self.fmt)
        stats = {"stage": f"export-{self.fmt}", "shard": shard, "rows_in": count, C.KEPT: count}
        atomic.write_json(marker, stats)
        return stats


def export_all(run_dir: RunDir, stages: Sequence[Stage], fmt: str, out_dir: Path) -> int:
    """Export every shard of a finished run to `out_dir` (the `mmcurate export` command)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: {fmt!r} is not available yet (choose from {', '.join(FORMATS)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    return sum(export_shard(run_dir, s, stages, fmt, out_dir) for s in range(run_dir.shard_count()))
