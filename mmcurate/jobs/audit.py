"""Questions auditors ask of the ledger: why was this sample dropped, what did this filter drop,
which images was it decided on."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmcurate.engine.rundir import INGEST, RunDir
from mmcurate.filters.instructions import IMAGE_TOKEN
from mmcurate.jobs.examples import HIDDEN, REFERENCE, stored_image
from mmcurate.jobs.ledger import sample_key
from mmcurate.jobs.manifest import stages_of
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import lookup
from mmcurate.schemas.errors import ConfigError
from mmcurate.schemas.reasons import is_reason, reasons_of
from mmcurate.stages import last_writer
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
    (or an unambiguous prefix of one) is looked up in the uid index (a ledger in parts) and read
    from the row groups that hold it."""
    frame = _matching(run_dir, stage=stage, reason=reason, uid=uid, status=status)
    if limit is not None:
        frame = frame.head(limit)
    return frame.collect().sort(C.ROW).unnest(C.SCORES)


def shown(run_dir: RunDir, rows: int, limit: int | None, **filters) -> str | None:
    """A note such as "20 of 81 shown" where `limit` cut the matches short (a lazy count of them), else None."""
    if limit is None or rows < limit:
        return None
    total = _matching(run_dir, **filters).select(pl.len()).collect().item()
    return f"{rows:,} of {total:,} shown (--limit 0 for all)" if total > rows else None


def _matching(run_dir: RunDir, *, stage=None, reason=None, uid=None, status=None) -> pl.LazyFrame:
    check_filters(run_dir, stage, reason)
    if uid is not None:
        uid = resolve_uid(run_dir, uid, "--uid")
        frame = pl.from_arrow(ledger_rows(run_dir, uid_rows(run_dir, uid))).lazy()
    else:
        frame = paths.scan_parquet(_files(run_dir))
    for column, value in ((C.STAGE, stage), (C.REASON, reason), (C.UID, uid), (C.STATUS, status)):
        if value is not None:
            frame = frame.filter(pl.col(column) == value)
    return frame


def check_filters(run_dir: RunDir, stage: str | None, reason: str | None) -> None:
    """An unknown --stage or --reason is an error naming the valid ones: the run's stages, and the
    reasons they can give (`schemas/reasons.py`) or the run's report counted. A valid one that no
    row has is no error (its answer is no rows)."""
    if stage is None and reason is None:
        return
    manifest = run_dir.read_manifest()
    order = manifest.get("stage_order") or [s.name for s in stages_of(manifest, str(run_dir.manifest))]
    stages = [INGEST, *(s for s in order if s != INGEST and not s.startswith("export-"))]
    reasons = reasons_of(stages)
    if paths.is_remote(run_dir.report_json) or run_dir.report_json.exists():
        try:  # what the run holds, should a stage give a reason the table lacks
            counted = json.loads(paths.read_text(run_dir.report_json)).get("reasons", [])
        except (OSError, ValueError):
            counted = []
        stages += [r[C.STAGE] for r in counted if r.get(C.STAGE) and r[C.STAGE] not in stages]
        reasons |= {r[C.REASON] for r in counted if r.get(C.REASON)}
    if stage is not None and stage not in stages:
        raise ConfigError(f"--stage {stage}: not a stage of this run; its stages: {', '.join(stages)}")
    if reason is not None and not is_reason(reason, reasons):
        raise ConfigError(f"--reason {reason}: no stage of this run gives it; they give: {', '.join(sorted(reasons))}")


def sample_ledger(run_dir: RunDir, n: int, seed: int, **filters) -> pl.DataFrame:
    """A reproducible random sample of `n` ledger rows matching `filters` (same run, seed: same rows).

    The rows with the `n` smallest seeded keys (`ledger.sample_key`), found batch by batch, so
    memory holds n rows whatever the ledger's size."""
    wanted = {k: v for k, v in filters.items() if v is not None}
    check_filters(run_dir, wanted.get("stage"), wanted.get("reason"))
    if C.UID in wanted:  # a few rows, found through the index
        frame = query_ledger(run_dir, limit=None, **filters)
        return frame[np.sort(np.argsort(sample_key(frame[C.ROW].to_numpy(), seed), kind="stable")[:n])]
    batches = (b for path in _files(run_dir)
               for b in paths.parquet_file(path).iter_batches(batch_size=65_536, columns=[C.ROW, *wanted]))
    rows = least_keys(batches, C.ROW, n, seed, wanted)
    return pl.from_arrow(ledger_rows(run_dir, rows.tolist())).sort(C.ROW).unnest(C.SCORES)


def least_keys(batches, number: str, n: int, seed: int, wanted: dict) -> np.ndarray:
    """The `number` column's values of the `n` rows of `batches` matching `wanted` (column: value)
    whose seeded keys (`ledger.sample_key`) are least: found batch by batch, so memory holds n rows
    whatever the file's size."""
    best = np.empty(0, np.uint64), np.empty(0, np.int64)
    for batch in batches:
        mask = None
        for k, v in wanted.items():
            hit = pc.equal(batch.column(k), v)
            mask = hit if mask is None else pc.and_(mask, hit)
        numbers = batch.column(number).to_numpy(zero_copy_only=False)
        if mask is not None:
            numbers = numbers[pc.fill_null(mask, False).to_numpy(zero_copy_only=False)]
        keys = np.concatenate([best[0], sample_key(numbers, seed)])
        numbers = np.concatenate([best[1], numbers])
        order = np.argsort(keys, kind="stable")[:n]
        best = keys[order], numbers[order]
    return best[1]


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
    found: list[int] = []
    for t in _uid_groups(run_dir, uid, uid):
        found += t.filter(pc.equal(t[C.UID], uid))[C.ROW].to_pylist()
    return found


def resolve_uid(run_dir: RunDir, uid: str, flag: str, most: int = 5) -> str:
    """The uid that `uid` names: itself, or the one uid it begins (the report shows 12 characters).

    Any length of prefix is taken; one that begins several uids is an error listing up to `most`
    of them. A prefix is the range [prefix, prefix + U+10FFFF) of the sorted uids, so the uid
    index's statistics find its row groups as they find a whole uid's, and the search stops at
    `most` + 1 uids. One that begins none is returned as it is (no row has it)."""
    found: set[str] = set()
    for t in _uid_groups(run_dir, uid, uid + "\U0010ffff"):
        found.update(t.filter(pc.starts_with(t[C.UID], uid))[C.UID].to_pylist())
        if len(found) > most:
            break
    if len(found) <= 1 or uid in found or uid_rows(run_dir, uid):
        return next(iter(found)) if len(found) == 1 else uid
    listed = ", ".join(sorted(found)[:most]) + (", ..." if len(found) > most else "")
    raise ConfigError(f"{flag} {uid}: ambiguous, the start of {'more than ' if len(found) > most else ''}"
                      f"{min(len(found), most)} uids: {listed}; give more of it")


def _uid_groups(run_dir: RunDir, lo: str, hi: str):
    """(uid, row) of the uid index's row groups that can hold uids in [lo, hi] (a ledger in
    parts), or of every row group of the one ledger file."""
    index = sorted(run_dir.ledger_index.glob("part-*.parquet")) if run_dir.ledger.is_dir() else []
    for path in index or _files(run_dir):
        pf = paths.parquet_file(path)
        for g in _groups(pf, C.UID, lo, hi) if index else range(pf.metadata.num_row_groups):
            yield pf.read_row_group(g, columns=[C.UID, C.ROW])


def explain(run_dir: RunDir, uid: str) -> list[dict]:
    """Every stage's decision, values, settings and model for each ledger row with `uid`, the
    caption an export writes, and the teacher's records with their questions and answers.

    A uid names an (url, caption) pair; the same pair given twice has two rows, both explained.
    The settings shown beside each stage are those it declares it decides by, as the run used
    them (`_as_ran`: the manifest's record of the model that ran wins over the configuration).
    """
    uid = resolve_uid(run_dir, uid, "--explain")
    rows = query_ledger(run_dir, uid=uid, limit=None)
    if rows.height == 0:
        raise ConfigError(f"--explain {uid}: no ledger row has this uid")
    manifest = run_dir.read_manifest()
    config, models = manifest["config"], manifest.get("models") or {}
    shard_size = config["input"]["shard_size"]
    built = stages_of(manifest, str(run_dir.manifest))
    settings = {s.name: s.settings for s in built}
    captions = last_writer(built, C.CAPTION)  # what an export writes; none: the input's caption
    out = []
    for row in rows.to_dicts():
        shard, kept = row[C.ROW] // shard_size, row[C.STATUS] == C.KEPT
        explained = {C.UID: row[C.UID], C.ROW: row[C.ROW], C.URL: row[C.URL], C.CAPTION: row[C.CAPTION],
                     "exported_caption": row[C.CAPTION] if kept and captions is None else None,
                     **{k: row[k] for k in (C.STATUS, C.STAGE, C.REASON, C.DETAIL)},
                     "decided_by": row[C.STAGE] or "kept by every stage", "steps": [],
                     **{k: row[k] for k in (C.DOCUMENT, C.POSITION) if k in row}}
        for name in (s for s in manifest.get("stage_order", []) if not s.startswith("export-")):
            record = _record(run_dir.shard_file(name, shard), row[C.ROW])
            if record is None:  # an earlier stage had already decided
                continue
            shown, configured = _as_ran(config, settings.get(name, ()), models.get(name))
            step = {"stage": name, "status": record[C.STATUS], "reason": record[C.REASON], "detail": record[C.DETAIL],
                    "values": {k: v for k, v in record.items() if k not in _NOT_VALUES}, "settings": shown}
            if configured:
                step["configured"] = configured
            if models.get(name):
                step["model"] = models[name]
            explained["steps"].append(step)
            if kept and captions is not None and name == captions.name and record[C.STATUS] == C.KEPT:
                explained["exported_caption"] = record[C.CAPTION]
        records = run_dir.instruction_file(shard)
        if records.exists():  # the teacher's records for this sample: why each was kept, rejected or failed
            explained["instructions"] = _instructions(records, row[C.ROW])
        out.append(explained)
    return out


_NOT_VALUES = {C.UID, C.ROW, C.STATUS, C.REASON, C.DETAIL, C.SOURCE, C.SOURCE_LINE, C.URL, C.CAPTION}
_RECORD_FIELDS = ("task", C.STATUS, C.REASON, "problems", "flags", "template_id", "template_version",
                  "request_hash", "error")
_ABSENT = object()


def _as_ran(config: dict, keys, model: dict | None) -> tuple[dict, dict]:
    """(a stage's settings as the run used them, the configured values of those it used otherwise).

    A setting is looked up in the manifest's record of the stage's model under its key less the
    section (`privacy.faces.detector` under `faces.detector`): recorded otherwise, the record is
    shown (the detector `auto` chose); recorded as null, the model that ran did not use it (a
    local-dir CLIP's `pretrained`), and it is left out."""
    shown, configured = {}, {}
    for key in keys:
        value, node = lookup(config, key), model
        for part in key.split(".")[1:]:
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is _ABSENT or isinstance(node, dict) or node == value:
            shown[key] = value
        elif node is not None:
            shown[key], configured[key] = node, value
    return shown, configured


def _record(path, row: int) -> dict | None:
    """A row's record in a stage's shard, without its image or embedding; None if the shard lacks it."""
    if not path.exists():
        return None
    table = _read(path)
    hit = table.filter(pc.equal(table[C.ROW], row))
    return hit.slice(0, 1).to_pylist()[0] if hit.num_rows else None


def _instructions(path, row: int) -> list[dict]:
    """The teacher's records of a row, each with its turns as question and answer."""
    table = paths.read_table(path, columns=[C.ROW, *_RECORD_FIELDS, "conversations"])
    out = []
    for r in table.filter(pc.equal(table[C.ROW], row)).to_pylist():
        convs = r["conversations"] or []
        turns = [{"question": q["value"].removeprefix(f"{IMAGE_TOKEN}\n"), "answer": a["value"]}
                 for q, a in zip(convs[::2], convs[1::2])]
        out.append({**{k: r[k] for k in _RECORD_FIELDS}, "turns": turns})
    return out


def _read(path):
    schema = paths.parquet_file(path).schema_arrow

    def bulky(t) -> bool:  # image bytes and embeddings are not explanations: leave them on disk
        lists = pa.types.is_list(t) or pa.types.is_large_list(t)
        return (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_list(t)
                or (lists and pa.types.is_floating(t.value_type)))

    return paths.read_table(path, columns=[f.name for f in schema if f.name != C.IMAGE and not bulky(f.type)])


def dump(run_dir: RunDir, uid: str, out: Path, show_nsfw: bool = False) -> tuple[list[dict], list[Path]]:
    """`explain`'s answer as `out`/decision.json beside the images behind it: each row's stored
    download image, its exported one (the last image-writing stage's, where that stage kept it:
    faces blurred) and, for a duplicate, its keeper's. A row flagged NSFW, or the duplicate of
    one, gets no image files unless `show_nsfw`; decision.json says so. `out`: a new or empty
    folder. Returns the explanation and the files written."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--dump {out}: exists and is not an empty folder; give a new or empty one")
    found = explain(run_dir, uid)
    manifest = run_dir.read_manifest()
    config = manifest["config"]
    writers = [s.name for s in stages_of(manifest, str(run_dir.manifest)) if C.IMAGE in s.data_columns]
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for row in found:
        values = {k: v for step in row["steps"] for k, v in step["values"].items()}
        keeper = _keeper(run_dir, row, values)
        row["images"] = []
        flagged = [r for r in (row | values, keeper) if r and _nsfw(r, config)]
        if flagged and not show_nsfw:
            row["images_withheld"] = (f"flagged NSFW ({', '.join(_nsfw(r, config) for r in flagged)}): no image "
                                      "written; --show-nsfw (with a new or empty --dump folder) writes them")
            continue
        for who, r in (("", row), ("keeper-", keeper)):
            for what, stage, data in _images(run_dir, r[C.ROW] if r else None, config["input"]["shard_size"], writers):
                path = out / f"{who}row{r[C.ROW]}-{stage}.{_ext(data)}"
                path.write_bytes(data)
                written.append(path)
                row["images"].append({"file": path.name, C.UID: r[C.UID], C.ROW: r[C.ROW],
                                      "what": f"{who.rstrip('-') or 'sample'}'s {what} image", C.STAGE: stage})
    decision = out / "decision.json"
    decision.write_text(json.dumps(found, indent=2, default=str) + "\n")
    return found, [*written, decision]


def _keeper(run_dir: RunDir, row: dict, values: dict) -> dict | None:
    """The ledger row (scores flattened) a duplicate was dropped for: a row with the uid its dedup
    score names (kept, if one is), other than itself; none for a reference image's match."""
    of = values.get(C.DUP_OF) or values.get(C.SEMANTIC_DUP_OF)
    if not of or row[C.REASON] == REFERENCE:
        return None
    rows = [r for r in uid_rows(run_dir, of) if r != row[C.ROW]]
    found = pl.from_arrow(ledger_rows(run_dir, rows)).unnest(C.SCORES).sort(C.ROW).to_dicts() if rows else []
    return next((r for r in found if r[C.STATUS] == C.KEPT), found[0] if found else None)


def _nsfw(row: dict, config: dict) -> str | None:
    """Why a row's images stay hidden: its reason (nsfw_image), or an NSFW score over the run's limit."""
    limit, score = lookup(config, "safety.nsfw.max_score"), row.get(C.NSFW)
    if row.get(C.REASON) in HIDDEN:
        return f"{row[C.UID]}: {row[C.REASON]}"
    return f"{row[C.UID]}: nsfw {score:.4f} > {limit:g}" if None not in (score, limit) and score > limit else None


def _images(run_dir: RunDir, row: int | None, shard_size: int, writers: list[str]):
    """(what, stage, bytes) of a row's stored download image and of its exported one, the last
    image-writing stage's, where that stage kept the row (none apart when no later stage writes
    images: the download image is exported as it is)."""
    if row is None or not writers:
        return
    shard = row // shard_size
    first, last = writers[0], writers[-1]
    if run_dir.shard_file(first, shard).exists() and (data := stored_image(run_dir.shard_file(first, shard), row)):
        yield "downloaded", first, data
    record = _record(run_dir.shard_file(last, shard), row) if last != first else None
    if record and record[C.STATUS] == C.KEPT and (data := stored_image(run_dir.shard_file(last, shard), row)):
        yield "exported", last, data


def _ext(data: bytes) -> str:
    """The file extension of encoded image bytes (`bin` for what does not decode)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = (im.format or "bin").lower()
    except Exception:  # noqa: BLE001 - written as it was stored
        return "bin"
    return {"jpeg": "jpg"}.get(fmt, fmt)
