"""Exports of the kept samples: webdataset tars (img2dataset's layout) and parquet, one file per shard."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from mmcurate.engine import atomic
from mmcurate.engine.rundir import RunDir
from mmcurate.engine.shards import utc
from mmcurate.jobs import cuts, described, document_export, recut
from mmcurate.jobs.hf_folder import save_dataset
from mmcurate.jobs.instructions import export_llava, require_instructions
from mmcurate.jobs.ledger import ledger_shard
from mmcurate.schemas import columns as C
from mmcurate.schemas.errors import ConfigError
from mmcurate.stages import last_writer, origin_columns
from mmcurate.stages.base import Stage

log = logging.getLogger(__name__)

FORMATS = ("webdataset", "parquet", "hf")  # per-shard formats first; hf is one dataset folder
SHARD_FORMATS = ("webdataset", "parquet")
KEY = C.KEY
_EXT = {"webdataset": "tar", "parquet": "parquet"}
EXPORT_COLUMNS = (KEY, C.UID, C.ROW, C.URL, C.CAPTION, C.DETAIL, C.IMAGE, C.IMAGE_FORMAT)


EXPORT_MARKER = "mmcurate_export.json"
# what an export folder may hold: shard files, the marker, temp files, hf's dataset files, llava's
_EXPORT_FILE = re.compile(r"\d{6}\.(tar|parquet|jsonl)|mmcurate_export\.json|\..+\.tmp|llava\.json|dataset_info\.json|"
                          r"state\.json|data-\d{5}-of-\d{5}\.arrow|keys\.parquet|ids\.(npy|parquet)")
_EXPORT_IMAGE = re.compile(r"\d{12}\.[a-z]{3,4}|\..+\.tmp")


def _from_an_export(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        return path.name == "images" and all(_EXPORT_IMAGE.fullmatch(p.name) and p.is_file() for p in path.iterdir())
    return path.is_file() and _EXPORT_FILE.fullmatch(path.name) is not None


def claim_out_dir(out_dir: Path) -> None:
    """Make `out_dir` ready for `mmcurate export`: new, empty, or an earlier export, which is cleared
    (its marker first, so a folder without one is known to be incomplete). A folder holding anything
    else is refused, untouched: an export never deletes what it did not write."""
    if not out_dir.exists():
        out_dir.mkdir(parents=True)
        return
    if not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: exists and is not a folder")
    foreign = sorted(p.name for p in out_dir.iterdir() if not _from_an_export(p))
    if foreign:
        raise ConfigError(f"--out {out_dir}: holds files that no mmcurate export wrote ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); give a new or empty folder")
    (out_dir / EXPORT_MARKER).unlink(missing_ok=True)
    for path in out_dir.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _flat_ledger(run_dir: RunDir, shard: int, stages: Sequence[Stage]) -> pl.DataFrame:
    """The ledger rows of one shard, scores flattened into columns."""
    ledger = pl.from_arrow(ledger_shard(run_dir, shard, stages))
    dtype = ledger.schema[C.SCORES]
    return ledger.unnest(C.SCORES) if isinstance(dtype, pl.Struct) and dtype.fields else ledger.drop(C.SCORES)


def _cut(run_dir: RunDir, shard: int, stages: Sequence[Stage], where: str | None) -> pl.DataFrame:
    """The ledger rows of one shard to export (scores flattened), or exit 2 naming --where."""
    ledger = _flat_ledger(run_dir, shard, stages)
    if where is None:
        return ledger.filter(pl.col(C.STATUS) == C.KEPT)
    return recut.classify(ledger, stages, where).filter(pl.col(recut.CUT) == recut.EXPORT).drop(recut.CUT)


def cut_summary(run_dir: RunDir, stages: Sequence[Stage], where: str) -> recut.CutSummary:
    """How many rows `where` matches, how many of them can be exported, why not the others."""
    recut.where_expr(where)  # exits 2 on a bad expression, whether or not the run has rows
    return recut.summarize((_flat_ledger(run_dir, s, stages) for s in range(run_dir.shard_count())), stages, where)


def kept_samples(run_dir: RunDir, shard: int, stages: Sequence[Stage], where: str | None = None) -> pa.Table:
    """The samples of one shard to export, with their image and every score as a column.

    Without `where`: the rows the run kept. With `where`: the rows of the cut that can be
    exported as the run left them (`jobs/recut.py`): kept, or dropped by a threshold whose score the
    expression names and after which no stage decides samples. A row is only ever exported with
    the image bytes and caption of the last stage that writes them (never an original that a
    later stage would have changed: faces blurred, PII redacted), and with the features and caption
    statistics of those bytes (`jobs/described.py`).
    """
    chosen = _with_writers(_cut(run_dir, shard, stages, where), run_dir, shard, stages, data=True)
    # attempts are the ledger's: a row that came back on a retry exports as if it never failed
    skip = {C.STATUS, C.STAGE, C.REASON, C.SOURCE, C.SOURCE_LINE, C.DOWNLOAD_ATTEMPTS}
    first = [*EXPORT_COLUMNS, *origin_columns(stages)]  # a pool's samples: their key and uid in it
    scores = [c for c in chosen.columns if c not in first and c not in skip]
    exact = stages[0].config.dedup.phash.exact if stages else False
    return described.describe_exported(chosen.select([*first, *scores]).to_arrow(), exact)


def exportable_rows(run_dir: RunDir, shard: int, stages: Sequence[Stage], where: str | None = None) -> pa.Table:
    """The ledger rows (scores flattened, with their key) of the samples `kept_samples` gives, read
    without their images."""
    return _with_writers(_cut(run_dir, shard, stages, where), run_dir, shard, stages, data=False).to_arrow()


def _with_writers(chosen: pl.DataFrame, run_dir: RunDir, shard: int, stages: Sequence[Stage], data: bool) -> pl.DataFrame:
    """`chosen` less the rows the last stages writing the image and the caption did not keep (and,
    with `data`, with the image and caption those stages left: faces blurred, PII redacted)."""
    for column, values in ((C.IMAGE, [C.IMAGE, C.IMAGE_FORMAT]), (C.CAPTION, [C.CAPTION])):
        writer = last_writer(stages, column)
        if writer is None:
            continue
        wanted = values if data else []
        table = pl.from_arrow(run_dir.read_shard(writer.name, shard, columns=[C.ROW, C.STATUS, *wanted]))
        table = table.filter(pl.col(C.STATUS) == C.KEPT).drop(C.STATUS)
        chosen = chosen.drop([c for c in wanted if c in chosen.columns]).join(table, on=C.ROW, how="inner")
    return chosen.sort(C.ROW).with_columns(pl.col(C.ROW).map_elements(C.sample_key, return_dtype=pl.String).alias(KEY))


def empty_schema(stages: Sequence[Stage]) -> pa.Schema:
    """The columns of a sample export of a run with no shards (an input with no rows)."""
    names = [*EXPORT_COLUMNS, *origin_columns(stages)]
    types = {**C.ORIGIN_TYPES, C.ROW: pa.int64(), C.IMAGE: pa.binary()}
    return pa.schema([pa.field(n, types.get(n, pa.string())) for n in names])


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


def export_shard(run_dir: RunDir, shard: int, stages: Sequence[Stage], fmt: str, out_dir: Path,
                 where: str | None = None) -> int:
    """Write one shard's samples in `fmt` under `out_dir`; return how many (no file when none)."""
    table = kept_samples(run_dir, shard, stages, where)
    if table.num_rows == 0:
        return 0
    write_file(fmt, out_dir, shard, table)
    return table.num_rows


def write_file(fmt: str, out_dir: Path, number: int, table: pa.Table) -> str:
    """`table`'s samples as file `number` of an export in `fmt` under `out_dir`; its name."""
    target = out_dir / f"{number:06d}.{_EXT[fmt]}"
    if fmt == "webdataset":
        atomic.write_with(target, lambda tmp: _write_tar(tmp, table))
    elif fmt == "parquet":
        atomic.write_with(target, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    else:
        raise ConfigError(f"--format: unknown export format {fmt!r} (choose from {', '.join(SHARD_FORMATS)})")
    return target.name


@dataclass
class ExportTask:
    """A picklable shard task: export one shard into the run's shards/<fmt>/ folder."""

    root: str
    stages: list[Stage]
    fmt: str

    def setup(self) -> None:
        """Nothing to load."""

    def __call__(self, shard: int) -> dict:
        run_dir = RunDir.at(self.root)
        marker = run_dir.stats_file(f"export-{self.fmt}", shard)
        if marker.exists():
            return json.loads(marker.read_text())
        started = time.time()
        count = export_shard(run_dir, shard, self.stages, self.fmt, run_dir.export_dir(self.fmt))
        stats = {"stage": f"export-{self.fmt}", "shard": shard, "rows_in": count, C.KEPT: count,
                 "started": utc(started), "finished": utc(time.time())}
        atomic.write_json(marker, stats)
        return stats


def export_hf(run_dir: RunDir, stages: Sequence[Stage], out_dir: Path, where: str | None = None) -> int:
    """A Hugging Face `datasets` folder (`load_from_disk`), images as a `datasets.Image` feature.

    Built shard by shard through `Dataset.from_generator`, so the export never holds more than
    one shard in memory; written to a temp folder and renamed into place.
    """
    import datasets

    datasets.disable_progress_bars()  # the command line draws progress; datasets' bars would mix into it
    shards = run_dir.shard_count()
    first = next((t for t in (kept_samples(run_dir, s, stages, where) for s in range(shards)) if t.num_rows), None)
    if first is None:  # nothing to export: an empty dataset, with the columns one would have
        schema = kept_samples(run_dir, 0, stages, where).schema if shards else empty_schema(stages)
    else:
        schema = first.schema
    features = datasets.Features.from_arrow_schema(schema.remove(schema.get_field_index(C.IMAGE)))
    features[C.IMAGE] = datasets.Image()

    def rows():
        for s in range(shards):
            for record in kept_samples(run_dir, s, stages, where).to_pylist():
                record[C.IMAGE] = {"bytes": record[C.IMAGE], "path": f"{record[KEY]}.{record[C.IMAGE_FORMAT] or 'jpg'}"}
                yield record

    return save_dataset(features, None if first is None else rows, out_dir)


def export_all(run_dir: RunDir, stages: Sequence[Stage], fmt: str, out_dir: Path, where: str | None = None,
               samples_per_shard: int | None = None, partial: bool = False) -> tuple[int, recut.CutSummary | None]:
    """Export every shard of a finished run to `out_dir` (the `mmcurate export` command), then its
    marker, last: only a complete export has one; the export is recorded in the run's manifest
    (`cuts`). Returns how many samples (or records) it wrote and, for a `where` cut, its summary.

    A cut that takes back rows the run cannot export as it is (`jobs/recut.py`) raises
    PartialCutError, before `out_dir` is touched, unless `partial` accepts exporting the rest."""
    summary = None
    if where is not None and fmt != "llava":
        summary = cut_summary(run_dir, stages, where)  # a bad expression exits 2 before --out is touched
        if not summary.complete and not partial:
            manifest = run_dir.read_manifest()
            raise recut.PartialCutError("\n".join([
                *summary.lines(run_dir.root, stages, manifest.get("config", {})),
                f"nothing was written; add --partial to export the {summary.exportable:,} that can be"]))
    count = _export_all(run_dir, stages, fmt, out_dir, where, samples_per_shard)
    record = {"out": str(out_dir), "format": fmt, "where": where, "rows": count,
              "created": datetime.now(UTC).isoformat(timespec="seconds"),
              **({"cut": summary.as_json(), "partial": not summary.complete} if summary else {}),
              **({"samples_per_shard": samples_per_shard} if samples_per_shard else {}),
              **({"keys": cuts.KEYS_FILE} if samples_per_shard and (out_dir / cuts.KEYS_FILE).exists() else {})}
    manifest = run_dir.read_manifest()
    atomic.write_json(out_dir / EXPORT_MARKER, {"run_dir": str(run_dir.root), "config_hash": manifest.get("config_hash"),
                                                **record})
    manifest.setdefault("cuts", []).append(record)
    try:
        atomic.write_json(run_dir.manifest, manifest)
    except OSError as err:  # a run dir the exporter may read and not write: the export itself is whole
        log.warning("the export is not recorded in %s: %s", run_dir.manifest, err)
    return count, summary


def _export_all(run_dir: RunDir, stages: Sequence[Stage], fmt: str, out_dir: Path, where: str | None,
                samples_per_shard: int | None = None) -> int:
    if fmt in document_export.INPUT_FORMATS or (fmt == "webdataset" and document_export.is_documents_run(stages)):
        document_export.check(stages, fmt, samples_per_shard)  # before the claim: a refusal leaves --out as it was
        claim_out_dir(out_dir)
        return document_export.export_documents(run_dir, stages, lambda s, w: kept_samples(run_dir, s, stages, w), fmt,
                                                out_dir, where, samples_per_shard)
    if fmt == "llava" and where is not None:
        raise ConfigError("--where: cuts apply to sample exports (webdataset, parquet, hf, ids), not to llava")
    if fmt not in FORMATS and fmt not in ("llava", "ids"):
        raise ConfigError(f"--format: {fmt!r} is not available (choose from {', '.join(FORMATS)}, llava, ids)")
    if samples_per_shard is not None and (fmt not in SHARD_FORMATS or samples_per_shard < 1):
        raise ConfigError(f"--samples-per-shard: {samples_per_shard} for {fmt}: repacks webdataset and parquet "
                          "exports into files of N >= 1 samples")
    if fmt == "ids":
        claim_out_dir(out_dir)
        return cuts.export_ids((exportable_rows(run_dir, s, stages, where) for s in range(run_dir.shard_count())), out_dir)
    if samples_per_shard is not None:
        claim_out_dir(out_dir)
        count = cuts.repack((kept_samples(run_dir, s, stages, where) for s in range(run_dir.shard_count())),
                            lambda number, table: write_file(fmt, out_dir, number, table), out_dir, samples_per_shard)
        if not count:
            write_empty(run_dir, stages, fmt, out_dir, where)
        return count
    if fmt == "llava":
        require_instructions(run_dir, stages)  # before the claim: a refused export leaves --out as it was
        claim_out_dir(out_dir)
        return export_llava(run_dir, stages, out_dir)
    claim_out_dir(out_dir)
    if fmt == "hf":
        return export_hf(run_dir, stages, out_dir, where)
    count = sum(export_shard(run_dir, s, stages, fmt, out_dir, where) for s in range(run_dir.shard_count()))
    if not count:
        write_empty(run_dir, stages, fmt, out_dir, where)
    return count


def write_empty(run_dir: RunDir, stages: Sequence[Stage], fmt: str, out_dir: Path, where: str | None = None) -> None:
    """An export of no samples as one empty file (a parquet file with the columns, a tar with no
    member), so that its readers find an empty dataset rather than no files at all."""
    schema = kept_samples(run_dir, 0, stages, where).schema if run_dir.shard_count() else empty_schema(stages)
    write_file(fmt, out_dir, 0, schema.empty_table())
