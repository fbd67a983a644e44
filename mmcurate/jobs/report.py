"""The report: report.json and a self-contained index.html, both built from the ledger and manifest."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import polars as pl

from mmcurate.engine import atomic
from mmcurate.engine.rundir import RunDir
from mmcurate.filters.base import Histogram
from mmcurate.jobs.document_report import document_report
from mmcurate.jobs.evidence import evidence_html, evidence_images, privacy_evidence
from mmcurate.jobs.examples import (SAMPLE_SEED, SAMPLES_PER_REASON, drop_samples, orphaned_duplicates, pick_pairs,
                                    samples_html, thumbnails)
from mmcurate.jobs.manifest import stages_of
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import lookup
from mmcurate.stages.base import Stage
from mmcurate.storage import paths


def build_report(run_dir: RunDir, run_stages: list[Stage] | None = None) -> dict:
    """The report's numbers, computed from the ledger (the source of truth) and the manifest."""
    manifest = run_dir.read_manifest()
    run_stages = stages_of(manifest) if run_stages is None else run_stages
    ledger = paths.scan_parquet(run_dir.ledger_files())
    counts = ledger.group_by(C.STATUS).len().collect()
    by_status = {row[C.STATUS]: row["len"] for row in counts.iter_rows(named=True)}
    total = sum(by_status.values())
    reasons = (
        ledger.filter(pl.col(C.STATUS) != C.KEPT)
        .group_by([C.STAGE, C.STATUS, C.REASON])
        .len()
        .sort(["len", C.STAGE, C.REASON], descending=[True, False, False])
        .collect()
    )
    removed_by_stage: dict[str, int] = {}
    for row in reasons.iter_rows(named=True):
        removed_by_stage[row[C.STAGE]] = removed_by_stage.get(row[C.STAGE], 0) + row["len"]
    funnel, remaining = [{"stage": "input", "rows": total}], total
    stages = manifest.get("stages", {})
    order = [s for s in manifest.get("stage_order", list(stages)) if s in stages]  # the files sort keys
    for name in order:
        info = stages[name]
        if info.get("status") != "done":
            continue
        remaining -= removed_by_stage.get(name, 0)
        funnel.append({"stage": name, "rows": remaining})
    config = manifest.get("config") or {}
    samples = drop_samples(run_dir.ledger_files())
    shard_size = config.get("input", {}).get("shard_size", 1)
    documents = document_report(run_dir, manifest, order)  # None: a pairs run, whose report is as it was
    return {
        "histograms": _histograms(ledger, config, [h for s in run_stages for h in s.histograms]),
        "samples": samples,
        "pairs": pick_pairs(ledger, samples, order),
        "orphaned_duplicates": orphaned_duplicates(ledger),
        "privacy_evidence": privacy_evidence(run_dir, ledger, run_stages, shard_size),
        "run_dir": str(run_dir.root),
        "status": manifest.get("status"),
        "rows": total,
        "kept": by_status.get(C.KEPT, 0),
        "dropped": by_status.get(C.DROPPED, 0),
        "failed": by_status.get(C.FAILED, 0),
        "invariant_holds": total == manifest.get("input", {}).get("rows"),
        "funnel": funnel,
        "reasons": reasons.rename({"len": "rows"}).to_dicts(),
        "stages": {
            name: {k: info.get(k) for k in ("status", "shards_total", "rows_in", "kept", "dropped", "failed",
                                           "seconds_this_run", "rows_per_s_this_run", "shard_seconds", "note")}
            for name, info in manifest.get("stages", {}).items()
        },
        "stage_order": order + [s for s in stages if s not in order],  # report.json's keys are sorted
        "exports": manifest.get("exports", {}),
        "config": manifest.get("config"),
        "models": manifest.get("models", {}),
        "versions": manifest.get("versions", {}),
        "input": manifest.get("input", {}),
        "synthesis": manifest.get("instructions"),
        # an interleaved input's documents: in, kept, dropped, failed (a pairs run's report is as it was)
        **({"documents": manifest["documents"]} if manifest.get("documents") else {}),
        **({"document_report": documents} if documents else {}),
    }


BINS = 30


def shortest(value: object) -> object:
    """A float32 score as the shortest decimal that is that float32 (0.7, not 0.699999988079071)."""
    if isinstance(value, float) and np.isfinite(value) and float(np.float32(value)) == value:
        return float(str(np.float32(value)))
    return value


def _num(value: object) -> str:
    """A number as the page prints it: floats to 4 significant digits (whole above 1000)."""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else format(value, ".4g")
    return "" if value is None else str(value)


def _histograms(ledger: pl.LazyFrame, config: dict, wanted: list[Histogram]) -> list[dict]:
    """Per score the stages draw: counts in BINS equal bins over the scored rows, and the threshold
    in force (its config key's value, or the score that holds the one the run chose).

    Two aggregating passes over the ledger file (range, then counts per bin), so the report's
    memory does not grow with the run; bins as numpy.histogram's (the last one closed).
    """
    fields = {f.name for f in ledger.collect_schema()[C.SCORES].fields}
    out = []
    for h in wanted:
        if h.score not in fields:
            continue
        v = pl.col(C.SCORES).struct.field(h.score).cast(pl.Float64)
        scored = ledger.select(v.alias("v")).drop_nulls()
        stats = scored.select(pl.len().alias("n"), pl.col("v").min().alias("lo"),
                              pl.col("v").max().alias("hi")).collect().row(0, named=True)
        if not stats["n"]:
            continue
        threshold = lookup(config, h.threshold_key)
        if h.threshold_score is not None:
            thr = ledger.select(pl.col(C.SCORES).struct.field(h.threshold_score)).drop_nulls().head(1).collect()
            threshold = shortest(thr.item()) if thr.height else None
        lo, hi = float(stats["lo"]), float(stats["hi"])
        if threshold is not None:
            lo, hi = min(lo, float(threshold)), max(hi, float(threshold))
        if hi == lo:
            hi = lo + 1
        width = (hi - lo) / BINS
        binned = (scored.select((((pl.col("v") - lo) / width).floor().clip(0, BINS - 1)).cast(pl.Int64).alias("b"))
                  .group_by("b").len().collect())
        counts = [0] * BINS
        for b, n in binned.iter_rows():
            counts[b] = n
        edges = [lo + i * width for i in range(BINS)] + [hi]
        out.append({"score": h.score, "rows": stats["n"], "threshold": threshold, "threshold_kind": h.kind,
                    "edges": [round(e, 6) for e in edges], "counts": counts})
    return out


def _svg_histogram(h: dict) -> str:
    w, ht, pad = 480, 150, 28
    top = max(h["counts"]) or 1
    lo, hi = h["edges"][0], h["edges"][-1]
    bw = (w - 2 * pad) / len(h["counts"])
    bars = "".join(
        f'<rect x="{pad + i * bw:.1f}" y="{ht - pad - (ht - 2 * pad) * c / top:.1f}" width="{max(bw - 1, 1):.1f}" '
        f'height="{(ht - 2 * pad) * c / top:.1f}" fill="#4a7bd0"><title>{c}</title></rect>'
        for i, c in enumerate(h["counts"])
    )
    line = ""
    if h["threshold"] is not None:
        x = pad + (w - 2 * pad) * (float(h["threshold"]) - lo) / (hi - lo)
        tx, anchor = (x - 3, "end") if x > w / 2 else (x + 3, "start")
        line = (f'<line class="threshold" x1="{x:.1f}" x2="{x:.1f}" y1="{pad / 2}" y2="{ht - pad}" stroke="#c00" '
                f'stroke-width="2"/><text x="{tx:.1f}" y="{pad / 2 + 8}" font-size="11" fill="#c00" '
                f'text-anchor="{anchor}">'
                f'{html.escape(h["threshold_kind"])} {_num(float(h["threshold"]))}</text>')
    axis = (f'<text x="{pad}" y="{ht - 8}" font-size="11">{_num(float(lo))}</text>'
            f'<text x="{w - pad}" y="{ht - 8}" font-size="11" text-anchor="end">{_num(float(hi))}</text>')
    return (f'<figure class="hist"><figcaption>{html.escape(h["score"])} ({h["rows"]:,} {h.get("unit", "rows")})'
            '</figcaption>'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{ht}" viewBox="0 0 {w} {ht}" role="img">'
            f'{bars}{line}{axis}</svg></figure>')


class Markup(str):
    """A table cell that is HTML already (built from escaped parts)."""


def _table(rows: list[dict], columns: list[str], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{v if isinstance(v, Markup) else html.escape(_num(v))}</td>"
                         for v in (r.get(c) for c in columns)) + "</tr>"
        for r in rows
    )
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _bars(rows: list[dict], label: str, value: str) -> str:
    """Bars drawn to scale: one grid whose middle column is every bar's track, so a bar's width is
    its value / the largest value of the track's width, whatever the length of its label."""
    top = max((r[value] for r in rows), default=1) or 1
    items = "".join(
        f'<span class="label" title="{html.escape(str(r[label]))}">{html.escape(str(r[label]))}</span>'
        f'<span class="track"><span class="fill" data-value="{r[value]}" style="width:{100 * r[value] / top:.4f}%">'
        f'</span></span><span class="num">{r[value]:,}</span>'
        for r in rows
    )
    return f'<div class="bars">{items}</div>'


def _flat(entry: dict, prefix: str = "") -> dict:
    """A nested dict's leaves under dotted keys."""
    out = {}
    for k, v in entry.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _model_rows(models: dict, where: str = "") -> list[dict]:
    """One row per model in the manifest's nested `models` (a stage's own, or each of its
    filters'): where, its name, its sha256 (shortened; whole in the title), and every other
    setting as `key: value` lines (nested settings as dotted keys)."""
    rows = []
    for key, entry in models.items():
        at = f"{where}.{key}" if where else key
        if entry and all(isinstance(v, dict) for v in entry.values()):  # a stage's filters, a model each
            rows += _model_rows(entry, at)
            continue
        settings = _flat(entry)
        sha = settings.pop("sha256", None)
        name = next((settings.pop(k) for k in ("model", "detector") if k in settings), None)
        lines = (f"{html.escape(k)}: {html.escape('none' if v is None else _num(v))}" for k, v in settings.items())
        rows.append({"stage": at, "model": name, "settings": Markup("<br>".join(lines)),
                     "sha256": Markup(f'<code title="{html.escape(sha)}">{html.escape(sha[:12])}&hellip;</code>')
                     if sha else None})
    return rows


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4} td{overflow-wrap:anywhere} table.models{table-layout:fixed;width:100%}
.models th:nth-child(1){width:9em} .models th:nth-child(2){width:30%} .models th:nth-child(3){width:9em}
.bars{display:grid;grid-template-columns:16em minmax(0,1fr) 7em;gap:2px 6px;align-items:center;max-width:50em}
.label{overflow:hidden;text-overflow:ellipsis;white-space:nowrap} .track{display:block}
.fill{background:#4a7bd0;height:14px;display:block}
.evidence{display:flex;flex-wrap:wrap;gap:10px;margin:.3em 0 1em}
.shot{border:1px solid #ddd;padding:4px;font-size:11px}
.shot figure{display:inline-block;margin:0 4px 0 0;width:196px;vertical-align:top}
.shot img{display:block;max-width:192px;max-height:192px;border:1px solid #ccc} .shot code{display:block}
.captions td:first-child{white-space:nowrap}
.ok{color:#186a1b} .bad{color:#a00} pre{background:#f7f7f7;padding:1em;overflow:auto}
.hist{display:inline-block;margin:.5em 1em .5em 0} figcaption{font-weight:600}
.thumbs{display:flex;flex-wrap:wrap;gap:6px;margin:.3em 0 1em} .thumbs figure{margin:0;width:116px;font-size:11px}
.thumbs img,.pair img{display:block;max-width:112px;max-height:112px;border:1px solid #ccc} code{font-size:11px}
.pairs{display:flex;flex-wrap:wrap;gap:10px;margin:.3em 0 1em} .pair{display:flex;flex-wrap:wrap;gap:4px;width:240px;
border:1px solid #ddd;padding:4px;font-size:11px} .pair figure{margin:0;width:116px} .pair span{display:block}
.pair .near{margin:0;width:100%;font-weight:600}
"""


def _synthesis_html(syn: dict | None) -> str:
    """Teacher requests, retries, failures and rejections by reason, tokens, per-task counts and lengths."""
    if not syn:
        return ""
    totals = [{"what": k, "value": syn.get(k)} for k in
              ("records", "llava_records", "requests", "retries", "cached", "refusal_rate", "tokens_in", "tokens_out",
               "question_cap")]
    parts = ["<h2>Instruction data (synthesis)</h2>", _table(totals, ["what", "value"]),
             _table([{"task": t, **c} for t, c in syn.get("by_task", {}).items()], ["task", "ok", "rejected", "failed"])]
    why = [{"what": f"rejected: {k}", "rows": v} for k, v in syn.get("rejected_by_reason", {}).items()]
    why += [{"what": f"failed: {k}", "rows": v} for k, v in syn.get("failed_by_reason", {}).items()]
    if why:
        parts.append(_bars(why, "what", "rows"))
    edges = syn.get("answer_length_bins") or []
    for task, counts in (syn.get("answer_length_by_task") or {}).items():
        labels = [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])] + [f"{edges[-1]}+"] if edges else []
        parts.append(f"<p>answer length (characters), {html.escape(task)}</p>")
        parts.append(_bars([{"chars": label, "answers": n} for label, n in zip(labels, counts)], "chars", "answers"))
    return "".join(parts)


def _documents_html(docs: dict | None) -> list[str]:
    """A documents run's section: its invariant, funnel, reasons, images and words per document, and
    examples of the documents removed, with their reasons; nothing for a pairs run."""
    if not docs:
        return []
    inv = '<span class="ok">holds</span>' if docs["invariant_holds"] else '<span class="bad">BROKEN</span>'
    shown = ("document", "document_id", "url", "status", "stage", "detail", "images_in", "images_kept", "words", "dup_of")

    def example(reason: str, rows: list[dict]) -> str:  # a column null in every row of a reason is left out
        return f"<h3>{html.escape(reason)}</h3>" + _table(rows, [c for c in shown if any(r.get(c) is not None for r in rows)])

    examples = "".join(example(reason, rows) for reason, rows in docs["examples"].items())
    return [
        "<h2>Documents</h2>",
        f"<p>{docs['documents']:,} input documents = {docs['kept']:,} kept + {docs['dropped']:,} dropped + "
        f"{docs['failed']:,} failed &mdash; documents invariant {inv}</p>",
        _bars(docs["funnel"], "stage", "documents"),
        "<p>Why documents were removed</p>",
        _bars([{"what": f"{r[C.STAGE]}: {r[C.REASON]}", "documents": r["documents"]} for r in docs["reasons"]],
              "what", "documents"),
        _table(docs["reasons"], [C.STAGE, C.STATUS, C.REASON, "documents"]),
        "".join(_svg_histogram(h) for h in docs["histograms"]),
        f"<p>Documents removed: a reproducible sample (seed {SAMPLE_SEED}) of up to {SAMPLES_PER_REASON} per "
        "reason (<code>mmcurate audit RUN --explain DOCUMENT_ID</code> lists one with its images)</p>",
        examples or "<p>no document was removed</p>",
    ]


def render_html(report: dict, thumbs: dict[int, str | None] | None = None, shots: dict[int, tuple] | None = None,
                show_nsfw: bool = False) -> str:
    """A self-contained page (inline CSS and SVG, images as data URIs, no scripts, no network):
    `thumbs` the examples' thumbnails, `shots` the privacy evidence's images (before, after)."""
    inv = (
        '<span class="ok">holds</span>' if report["invariant_holds"] else '<span class="bad">BROKEN</span>'
    )
    order = report.get("stage_order") or list(report["stages"])
    stages = [{"stage": k, **report["stages"][k]} for k in order if k in report["stages"]]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mmcurate report</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>mmcurate report</h1><p>{html.escape(report['run_dir'])}: status {html.escape(str(report['status']))}</p>",
        f"<p>{report['rows']:,} input rows = {report['kept']:,} kept + {report['dropped']:,} dropped + "
        f"{report['failed']:,} failed &mdash; ledger invariant {inv}</p>",
        *_documents_html(report.get("document_report")),
        "<h2>Funnel</h2>",
        _bars(report["funnel"], "stage", "rows"),
        "<h2>Why rows were removed</h2>",
        _bars([{"what": f"{r[C.STAGE]}: {r[C.REASON]}", "rows": r["rows"]} for r in report["reasons"]], "what", "rows"),
        _table(report["reasons"], [C.STAGE, C.STATUS, C.REASON, "rows"]),
        "<h2>Scores</h2>",
        "".join(_svg_histogram(h) for h in report["histograms"]) or "<p>no scores in this run</p>",
        "<h2>Samples of what was dropped</h2>",
        f"<p>A reproducible random sample (seed {SAMPLE_SEED}) of up to {SAMPLES_PER_REASON} rows per reason; "
        "a duplicate beside the row it duplicates (or the reference image), with their distance or similarity.</p>",
        samples_html(report, thumbs or {}, show_nsfw),
        "<h2>Privacy evidence</h2>",
        evidence_html(report.get("privacy_evidence") or {}, shots or {}),
        _synthesis_html(report.get("synthesis")),
        "<h2>Models</h2>",
        _table(_model_rows(report["models"]), ["stage", "model", "sha256", "settings"], "models")
        if report["models"] else "<p>no models</p>",
        "<h2>Stages</h2>",
        _table(stages, ["stage", "status", "shards_total", "rows_in", "kept", "dropped", "failed",
                        "seconds_this_run", "rows_per_s_this_run", "note"]),
        "<h2>Exports</h2>",
        _table([{"format": k, **v} for k, v in report["exports"].items()], ["format", "status", "rows", "path"]),
        "<h2>Configuration</h2>",
        f"<pre>{html.escape(json.dumps(report['config'], indent=2))}</pre>",
        "<h2>Versions</h2>",
        _table([{"package": k, "version": v} for k, v in report["versions"].items()], ["package", "version"]),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(run_dir: RunDir, show_nsfw: bool = False) -> Path:
    """(Re)build report/report.json and report/index.html; return the page's path. NSFW drops are
    listed by uid, their images shown only with `show_nsfw`."""
    manifest = run_dir.read_manifest()
    stages = stages_of(manifest)
    report = build_report(run_dir, stages)
    atomic.write_json(run_dir.report_json, report)
    thumbs = thumbnails(run_dir, manifest, stages, report, show_nsfw)
    shard_size = (manifest.get("config") or {}).get("input", {}).get("shard_size", 1)
    shots = evidence_images(run_dir, stages, report["privacy_evidence"], shard_size)
    text = render_html(report, thumbs, shots, show_nsfw)
    atomic.write_with(run_dir.report_page, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return run_dir.report_page

