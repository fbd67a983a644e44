"""The report's privacy evidence: a few kept rows the privacy stage acted on, before and after.

Faces: the image the privacy stage was given (the last image writer's before it) with the
detector's boxes drawn, beside the image as exported (blurred). Personal data: the caption as
given (the ledger's) beside the caption as exported (redacted). One batched pass over the
ledger's two action columns picks the rows, in the samples' reproducible order; then one filtered
read of the ledger and a read of each picked row's shard, so the report stays small at any size.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.compute as pc

from mmcurate.engine.rundir import RunDir
from mmcurate.jobs.examples import SAMPLE_SEED, data_uri, stored_image
from mmcurate.jobs.ledger import sample_key
from mmcurate.schemas import columns as C
from mmcurate.stages import last_writer
from mmcurate.stages.base import Stage
from mmcurate.stages.privacy import PrivacyStage
from mmcurate.storage import paths

EVIDENCE_ROWS = 4  # per action
SHOWN = 192  # px, the evidence images' longest side
ACTIONS = {"faces": C.FACE_ACTION, "pii": C.PII_ACTION}  # what the report calls it: the ledger's action score
FIELDS = {"faces": (C.FACES, C.FACE_BOXES, C.FACE_ACTION), "pii": (C.PII_TYPES, C.PII_ACTION)}


def pick_changed(files: list[Path]) -> dict[str, list[int]]:
    """Up to EVIDENCE_ROWS kept rows per privacy action (faces, pii), the first in the samples'
    reproducible order, read batch by batch (O(batch) memory)."""
    if not files:
        return {}
    fields = {f.name for f in paths.parquet_file(files[0]).schema_arrow.field(C.SCORES).type}
    wanted = {kind: column for kind, column in ACTIONS.items() if column in fields}
    best: dict[str, list[tuple[int, int]]] = {kind: [] for kind in wanted}
    columns = [C.ROW, C.STATUS, *(f"{C.SCORES}.{column}" for column in wanted.values())]
    for path in files if wanted else []:
        for batch in paths.parquet_file(path).iter_batches(batch_size=65_536, columns=columns):
            kept = pc.equal(batch.column(C.STATUS), C.KEPT)
            rows = batch.column(C.ROW).to_numpy()
            keys = sample_key(rows, SAMPLE_SEED)
            for kind, column in wanted.items():
                acted = pc.and_(kept, pc.is_valid(batch.column(C.SCORES).field(column)))
                idx = np.flatnonzero(acted.to_numpy(zero_copy_only=False))
                idx = idx[np.argsort(keys[idx], kind="stable")[:EVIDENCE_ROWS]]
                best[kind] = sorted(best[kind] + [(int(keys[i]), int(rows[i])) for i in idx])[:EVIDENCE_ROWS]
    return {kind: sorted(row for _, row in picked) for kind, picked in best.items() if picked}


def privacy_evidence(run_dir: RunDir, ledger: pl.LazyFrame, stages: list[Stage], shard_size: int) -> dict:
    """report.json's `privacy_evidence`: per action, the picked rows' uid, row and action; faces
    their count and boxes (stored-image pixels), pii the types found and the caption before and after."""
    picked = pick_changed(run_dir.ledger_files())
    if not picked:
        return {}
    rows = sorted({row for rows in picked.values() for row in rows})
    fields = [f for kind in picked for f in FIELDS[kind]]
    found = (ledger.filter(pl.col(C.ROW).is_in(rows))
             .select(C.ROW, C.UID, C.CAPTION, *[pl.col(C.SCORES).struct.field(f) for f in fields]).collect())
    by_row = {r[C.ROW]: r for r in found.iter_rows(named=True)}
    out: dict[str, list[dict]] = {}
    for row in picked.get("faces", []):
        r = by_row[row]
        out.setdefault("faces", []).append({"uid": r[C.UID], "row": row, "action": r[C.FACE_ACTION],
                                            "faces": r[C.FACES], "boxes": r[C.FACE_BOXES]})
    writer = last_writer(stages, C.CAPTION)
    for row in picked.get("pii", []):
        r = by_row[row]
        out.setdefault("pii", []).append({"uid": r[C.UID], "row": row, "action": r[C.PII_ACTION],
                                          "pii_types": r[C.PII_TYPES], "before": r[C.CAPTION],
                                          "after": _stored_caption(run_dir, writer, row, shard_size)})
    return out


def _stored_caption(run_dir: RunDir, writer: Stage | None, row: int, shard_size: int) -> str | None:
    """The caption as exported: the last caption-writing stage's."""
    if writer is None:
        return None
    table = run_dir.read_shard(writer.name, row // shard_size, columns=[C.ROW, C.CAPTION])
    hit = table.filter(pc.equal(table[C.ROW], row))
    return hit[C.CAPTION][0].as_py() if hit.num_rows else None


def _boxes_drawn(boxes: list[list[int]]):
    """An edit that outlines each [x1, y1, x2, y2] box in red, thick enough to show at SHOWN px."""
    from PIL import Image, ImageDraw

    def draw(rgb: np.ndarray) -> np.ndarray:
        im = Image.fromarray(rgb)
        pen = ImageDraw.Draw(im)
        width = max(2, round(2 * max(im.size) / SHOWN))
        for x1, y1, x2, y2 in boxes:
            pen.rectangle((x1, y1, x2 - 1, y2 - 1), outline=(230, 0, 0), width=width)
        return np.asarray(im)

    return draw


def evidence_images(run_dir: RunDir, stages: list[Stage], evidence: dict, shard_size: int) -> dict[int, tuple]:
    """Per face row: (the image the privacy stage was given, its boxes drawn; the image as exported)
    as data URIs. The boxes are in the given image's pixels (after download's resize, EXIF applied)."""
    writers = [s.name for s in stages if C.IMAGE in s.data_columns]
    if PrivacyStage.name not in writers[1:]:
        return {}
    given = writers[writers.index(PrivacyStage.name) - 1]
    exported = last_writer(stages, C.IMAGE).name

    def image(stage: str, row: int) -> bytes | None:
        path = run_dir.shard_file(stage, row // shard_size)
        return stored_image(path, row) if path.exists() else None

    shots = {}
    for item in evidence.get("faces", []):
        before, after = image(given, item["row"]), image(exported, item["row"])
        shots[item["row"]] = (data_uri(before, _boxes_drawn(item["boxes"] or []), SHOWN) if before else None,
                              data_uri(after, None, SHOWN) if after else None)
    return shots


def _img(uri: str | None, caption: str) -> str:
    img = f'<img class="thumb" src="{uri}" alt="{html.escape(caption)}">' if uri else "<div>(no image)</div>"
    return f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>"


def evidence_html(evidence: dict, shots: dict[int, tuple]) -> str:
    """The section's body: face rows as image pairs, redacted captions as a before/after table."""
    if not evidence:
        return "<p>the privacy stage changed no kept row in this run</p>"
    parts = [f"<p>Up to {EVIDENCE_ROWS} kept rows per action, chosen as the samples are (seed {SAMPLE_SEED}).</p>"]
    if evidence.get("faces"):
        parts.append("<h3>faces</h3><div class=\"evidence\">")
        for item in evidence["faces"]:
            before, after = shots.get(item["row"], (None, None))
            given = _img(before, f"{item['faces']} face(s) boxed, as the detector found them")
            exported = _img(after, f"as exported ({item['action']})")
            parts.append(f'<div class="shot">{given}{exported}<code>{html.escape(item["uid"][:12])}</code></div>')
        parts.append("</div>")
    if evidence.get("pii"):
        rows = "".join(f'<tr><td><code>{html.escape(i["uid"][:12])}</code></td>'
                       f'<td>{html.escape(", ".join(i["pii_types"] or []))} ({html.escape(str(i["action"]))})</td>'
                       f'<td>{html.escape(i["before"] or "")}</td><td>{html.escape(i["after"] or "")}</td></tr>'
                       for i in evidence["pii"])
        head = "<tr><th>uid</th><th>found</th><th>caption as given</th><th>as exported</th></tr>"
        parts.append(f'<h3>personal data in captions</h3><table class="captions"><thead>{head}</thead>'
                     f"<tbody>{rows}</tbody></table>")
    return "".join(parts)
