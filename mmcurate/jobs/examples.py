"""The report's examples: a reproducible sample of dropped rows per reason, each sampled duplicate
beside the row (or reference image) it duplicates, and their thumbnails.

Every pass reads the ledger batch by batch or through a filter on a few rows, so the report's
memory and size stay flat however many rows the run has.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from mmcurate.engine.rundir import RunDir
from mmcurate.jobs.ledger import sample_key
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import lookup
from mmcurate.stages.base import Stage
from mmcurate.storage import paths

SAMPLES_PER_REASON = 6
HIDDEN = frozenset({"nsfw_image"})  # listed by uid; their images shown only when asked (show_nsfw)
SAMPLE_SEED = 0
# reasons whose rows duplicate another: the score naming it, and the one saying how near (and as what)
PAIRED = {
    "near_reference": (C.DUP_OF, C.DUP_DISTANCE, "distance"),
    "exact_duplicate": (C.DUP_OF, C.DUP_DISTANCE, "distance"),
    "near_duplicate": (C.DUP_OF, C.DUP_DISTANCE, "distance"),
    "semantic_duplicate": (C.SEMANTIC_DUP_OF, C.SEMANTIC_SIMILARITY, "similarity"),
}
REFERENCE = "near_reference"  # its rows name a reference image's id, not a row's uid
MAX_REFERENCE_BYTES = 8 << 20  # a larger reference image is named, not shown


def sample_per_reason(batches, number: str, removed: str, carry: str | None = None
                      ) -> dict[str, list[tuple[int, int, object]]]:
    """Per reason, the SAMPLES_PER_REASON rows of `batches` with status `removed` (or any but kept,
    for "not_kept") whose seeded key of their `number` column is least: (key, number, the `carry`
    column's value). Reproducible (the same run: the same rows) and read batch by batch."""
    best: dict[str, list[tuple[int, int, object]]] = {}
    for batch in batches:
        t = pa.Table.from_batches([batch])
        t = t.filter(pc.not_equal(t[C.STATUS], C.KEPT) if removed == "not_kept" else pc.equal(t[C.STATUS], removed))
        if not t.num_rows:
            continue
        numbers = t[number].to_numpy()
        keys = sample_key(numbers, SAMPLE_SEED)
        enc = t[C.REASON].combine_chunks().dictionary_encode()
        codes = enc.indices.to_numpy(zero_copy_only=False)
        for code, reason in enumerate(enc.dictionary.to_pylist()):
            idx = np.flatnonzero(codes == code)
            idx = idx[np.argsort(keys[idx], kind="stable")[:SAMPLES_PER_REASON]]
            carried = t[carry].take(pa.array(idx)).to_pylist() if carry else [None] * len(idx)
            found = best.get(str(reason), []) + [(int(keys[i]), int(numbers[i]), c) for i, c in zip(idx, carried)]
            best[str(reason)] = sorted(found, key=lambda x: x[:2])[:SAMPLES_PER_REASON]
    return best


def drop_samples(files: list[Path]) -> dict[str, list[dict]]:
    """A reproducible pseudo-random sample of dropped rows per reason (rows, so repeated uids
    stay distinct), read batch by batch keeping only the best SAMPLES_PER_REASON of each reason."""
    batches = (b for path in files for b in paths.parquet_file(path).iter_batches(
        batch_size=65_536, columns=[C.ROW, C.UID, C.STATUS, C.REASON]))
    best = sample_per_reason(batches, C.ROW, C.DROPPED, C.UID)
    return {reason: [{"uid": u, "row": r} for _, r, u in sorted(picked, key=lambda x: x[1])]
            for reason, picked in sorted(best.items())}


def pick_pairs(ledger: pl.LazyFrame, samples: dict[str, list[dict]], stage_order: list[str]) -> dict[str, list[dict]]:
    """Each sampled duplicate with what it duplicates, from the deciding stage's scores: the kept
    row's uid and row (the row with that uid that got past the stage) and the pHash `distance`
    (or cosine `similarity`); a `near_reference` row names the reference image's id instead.

    Two filtered reads of the ledger: the sampled rows' scores, then the rows of their keepers' uids.
    """
    fields = {f.name for f in ledger.collect_schema()[C.SCORES].fields}
    wanted = {reason: items for reason, items in samples.items()
              if reason in PAIRED and set(PAIRED[reason][:2]) <= fields}
    if not wanted:
        return {}
    columns = sorted({c for reason in wanted for c in PAIRED[reason][:2]})
    rows = [item["row"] for items in wanted.values() for item in items]
    scored = (ledger.filter(pl.col(C.ROW).is_in(rows))
              .select(C.ROW, C.STAGE, *[pl.col(C.SCORES).struct.field(c) for c in columns]).collect())
    by_row = {r[C.ROW]: r for r in scored.iter_rows(named=True)}
    keeper_uids = {by_row[item["row"]][PAIRED[reason][0]] for reason, items in wanted.items() if reason != REFERENCE
                   for item in items if item["row"] in by_row}
    keepers: dict[str, list[dict]] = {}
    if keeper_uids - {None}:
        found = (ledger.filter(pl.col(C.UID).is_in(sorted(keeper_uids - {None})))
                 .select(C.UID, C.ROW, C.STAGE, C.STATUS, C.REASON).collect().sort(C.ROW))
        for r in found.iter_rows(named=True):
            keepers.setdefault(r[C.UID], []).append(r)
    position = {name: i for i, name in enumerate(stage_order)}
    out: dict[str, list[dict]] = {}
    for reason, items in wanted.items():
        of, near, kind = PAIRED[reason]
        for item in items:
            scores = by_row.get(item["row"])
            if scores is None or scores[of] is None:
                continue
            pair = {"uid": item["uid"], "row": item["row"], kind: scores[near]}
            if reason == REFERENCE:
                pair["reference"] = scores[of]
            else:
                after = position.get(scores[C.STAGE], -1)  # the keeper got past the stage that dropped this row
                keeper = next((k for k in keepers.get(scores[of], []) if k[C.ROW] != item["row"]
                               and (k[C.STAGE] is None or position.get(k[C.STAGE], -1) > after)), None)
                pair.update(keeper_uid=scores[of], keeper_row=keeper and keeper[C.ROW],
                            keeper_status=keeper and keeper[C.STATUS], keeper_reason=keeper and keeper[C.REASON])
            out.setdefault(reason, []).append(pair)
    return out


def orphaned_duplicates(ledger: pl.LazyFrame) -> dict[str, int]:
    """Per duplicate reason, the rows whose keeper a later stage dropped (so neither survives):
    dedup chooses keepers before CLIP and safety judge them (README, "Deduplication")."""
    fields = {f.name for f in ledger.collect_schema()[C.SCORES].fields}
    found = [(reason, of) for reason, (of, _, _) in PAIRED.items() if reason != REFERENCE and of in fields]
    if not found:
        return {}
    kept = ledger.filter(pl.col(C.STATUS) == C.KEPT).select(pl.col(C.UID).alias("keeper")).unique()
    dups = pl.concat([ledger.filter(pl.col(C.REASON) == reason)
                      .select(C.REASON, pl.col(C.SCORES).struct.field(of).alias("keeper")) for reason, of in found])
    lost = dups.join(kept, on="keeper", how="anti").group_by(C.REASON).len().collect()
    return {r: n for r, n in sorted(lost.iter_rows())}


def stored_image(path: Path, row: int) -> bytes | None:
    """One row's image from a stage's shard file, reading images a batch at a time (a shard of
    large images is never decoded whole for one thumbnail)."""
    pf = paths.parquet_file(path, pre_buffer=False, buffer_size=1 << 20)  # stream pages, not the column
    hit = np.flatnonzero(pf.read(columns=[C.ROW])[C.ROW].to_numpy() == row)
    if not len(hit):
        return None
    position, seen = int(hit[0]), 0
    for batch in pf.iter_batches(batch_size=32, columns=[C.IMAGE]):
        if position < seen + batch.num_rows:
            return batch.column(0)[position - seen].as_py()
        seen += batch.num_rows
    return None


def data_uri(data: bytes, edit=None, size: int = 112) -> str | None:
    """A small JPEG data URI of encoded image bytes, EXIF orientation applied as the filters see
    it (changed by `edit(rgb)` if given: faces blurred, boxes drawn); None for bytes that do not
    decode."""
    import base64
    import io

    from PIL import Image

    from mmcurate.filters.images import decode_rgb

    try:
        rgb = decode_rgb(data)
        im = Image.fromarray(edit(rgb) if edit is not None else rgb)
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
    except Exception:  # undecodable bytes: listed by uid instead
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _thumbnail(run_dir: RunDir, row: int, shard_size: int, image_stages: list[str], blur=None) -> str | None:
    """A row's stored image as a thumbnail, if it has one.

    The image comes from the last image-writing stage that holds the row (a row dropped before
    the privacy stage has only its downloaded image); `blur(rgb)` hides faces in those.
    """
    for i, stage in enumerate(image_stages):
        path = run_dir.shard_file(stage, row // shard_size)
        if not path.exists():
            continue
        data = stored_image(path, row)
        if data:
            return data_uri(data, blur if i > 0 else None)  # the first already blurred faces
    return None


def _reference_thumbnail(folder: str | None, ref_id: str, blur=None) -> str | None:
    """A reference image as a thumbnail, where the reference set is a folder of images (a parquet
    of hashes has none) and the file is small enough to read for it."""
    if not folder or not Path(folder).is_dir():
        return None
    root = Path(folder).resolve()
    path = (root / ref_id).resolve()
    if not path.is_relative_to(root) or not path.is_file() or path.stat().st_size > MAX_REFERENCE_BYTES:
        return None
    return data_uri(path.read_bytes(), blur)


def image_stages(manifest: dict, stages: list[Stage]) -> tuple[list[str], object]:
    """Stages that write image bytes, last first, and a face blur for images from before privacy.

    Thumbnails show what exports would (faces blurred); a row dropped before the privacy stage
    shows its downloaded image with faces blurred on the spot when faces are to be blurred.
    """
    if not stages:
        return [], None
    config = stages[0].config
    names = [s.name for s in stages if C.IMAGE in s.data_columns][::-1]
    blur = None
    faces = (manifest.get("models") or {}).get("privacy", {}).get("faces")
    if config.privacy.faces.enabled and config.privacy.faces.action == "blur" and faces:
        from mmcurate.filters.faces import FaceDetector
        from mmcurate.filters.faces import blur as blur_faces

        detector = FaceDetector(faces["detector"], faces["weights"], config.privacy.faces.min_confidence)

        def blur(rgb):
            return blur_faces(rgb, detector.detect(rgb))

    return names, blur


def thumbnails(run_dir: RunDir, manifest: dict, stages: list[Stage], report: dict, show_nsfw: bool = False) -> dict:
    """Thumbnails of the report's examples: by row (samples and keepers) and by reference id; none
    of a HIDDEN reason's rows (or of their duplicates) unless `show_nsfw`."""
    hidden = frozenset() if show_nsfw else HIDDEN
    config = manifest.get("config") or {}
    shard_size = config.get("input", {}).get("shard_size", 1)
    images_from, blur = image_stages(manifest, stages)
    thumbs: dict = {}
    if not images_from:
        return thumbs
    for reason, items in report["samples"].items():
        for item in items:
            if reason not in hidden:
                thumbs[item["row"]] = _thumbnail(run_dir, item["row"], shard_size, images_from, blur)
    for pairs in report.get("pairs", {}).values():
        for pair in pairs:
            if pair.get("keeper_reason") in hidden:
                continue
            if pair.get("keeper_row") is not None:
                thumbs[pair["keeper_row"]] = _thumbnail(run_dir, pair["keeper_row"], shard_size, images_from, blur)
            if "reference" in pair and pair["reference"] not in thumbs:
                thumbs[pair["reference"]] = _reference_thumbnail(lookup(config, "dedup.reference_path"),
                                                                 pair["reference"], blur)
    return thumbs


def _figure(uri: str | None, uid: str, label: str = "", short: bool = True) -> str:
    img = f'<img class="thumb" src="{uri}" alt="{html.escape(uid)}">' if uri else "<div>(no image)</div>"
    return f"<figure>{img}<code>{html.escape(uid[:12] if short else uid)}</code>{label}</figure>"


def _pair_html(reason: str, pair: dict, thumbs: dict, hidden_reasons: frozenset) -> str:
    """A dropped duplicate beside its keeper (or reference image) and how near they are."""
    hidden = pair.get("keeper_reason") in hidden_reasons  # the same picture as one not shown
    near = ""
    if pair.get("similarity") is not None:
        near = f"cosine similarity {pair['similarity']:.3f}"
    elif pair.get("distance") is not None:
        near = f"pHash distance {pair['distance']}"
    if reason == "exact_duplicate":
        near = f"identical bytes ({near})" if near else "identical bytes"
    if "reference" in pair:
        other = _figure(thumbs.get(pair["reference"]), pair["reference"], "<span>reference image</span>",
                        short=False)
    else:
        state = pair.get("keeper_reason") or pair.get("keeper_status") or "row not found"
        other = _figure(None if hidden else thumbs.get(pair.get("keeper_row")), pair["keeper_uid"],
                        f"<span>its keeper ({html.escape(str(state))})</span>")
    mine = _figure(None if hidden else thumbs.get(pair["row"]), pair["uid"], "<span>dropped</span>")
    return f'<div class="pair">{mine}{other}<p class="near">{html.escape(near)}</p></div>'


def samples_html(report: dict, thumbs: dict, show_nsfw: bool = False) -> str:
    """The sampled drops per reason: thumbnails, duplicates as pairs, HIDDEN reasons by uid
    (unless `show_nsfw`)."""
    hidden = frozenset() if show_nsfw else HIDDEN
    parts = []
    pairs = report.get("pairs", {})
    for reason, items in report["samples"].items():
        parts.append(f"<h3>{html.escape(reason)}</h3>")
        if reason in HIDDEN and show_nsfw:
            parts.append("<p>shown on request (<code>--show-nsfw</code>)</p>")
        if reason in hidden:
            uids = ", ".join(f"<code>{html.escape(i['uid'])}</code>" for i in items)
            parts.append(f"<p>not shown (by policy; <code>mmcurate report --show-nsfw</code> shows them); "
                         f"uids: {uids}</p>")
        elif pairs.get(reason):
            if lost := report.get("orphaned_duplicates", {}).get(reason):
                parts.append(f"<p>{lost:,} of them lost their keeper to a later stage: neither survives "
                             "(dedup chooses keepers before CLIP and safety judge them)</p>")
            shown = "".join(_pair_html(reason, p, thumbs, hidden) for p in pairs[reason])
            parts.append(f'<div class="pairs">{shown}</div>')
        else:
            figs = "".join(_figure(thumbs.get(item["row"]), item["uid"]) for item in items)
            parts.append(f'<div class="thumbs">{figs}</div>')
    return "".join(parts) or "<p>nothing was dropped</p>"
