"""The report: report.json and a self-contained index.html, both built from the ledger and manifest."""

from __future__ import annotations

import html
import json
from pathlib import Path

import polars as pl

from mmcurate.engine import atomic
from mmcurate.engine.rundir import RunDir
from mmcurate.filters.base import Histogram
from mmcurate.jobs.examples import SAMPLE_SEED, SAMPLES_PER_REASON, drop_samples, pick_pairs, samples_html, thumbnails
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
    return {
        "histograms": _histograms(ledger, config, [h for s in run_stages for h in s.histograms]),
        "samples": samples,
        "pairs": pick_pairs(ledger, samples, order),
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
        "exports": manifest.get("exports", {}),
        "config": manifest.get("config"),
        "models": manifest.get("models", {}),
        "versions": manifest.get("versions", {}),
        "input": manifest.get("input", {}),
        "synthesis": manifest.get("instructions"),
    }


BINS = 30


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
            threshold = float(thr.item()) if thr.height else None
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
                f'{html.escape(h["threshold_kind"])} {float(h["threshold"]):g}</text>')
    axis = (f'<text x="{pad}" y="{ht - 8}" font-size="11">{lo:g}</text>'
            f'<text x="{w - pad}" y="{ht - 8}" font-size="11" text-anchor="end">{hi:g}</text>')
    return (f'<figure class="hist"><figcaption>{html.escape(h["score"])} ({h["rows"]:,} rows)</figcaption>'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{ht}" viewBox="0 0 {w} {ht}" role="img">'
            f'{bars}{line}{axis}</svg></figure>')


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if r.get(c) is None else str(r.get(c)))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _bars(rows: list[dict], label: str, value: str) -> str:
    top = max((r[value] for r in rows), default=1) or 1
    items = "".join(
        f'<div class="bar"><span class="label">{html.escape(str(r[label]))}</span>'
        f'<span class="fill" style="width:{100 * r[value] / top:.1f}%"></span>'
        f'<span class="num">{r[value]:,}</span></div>'
        for r in rows
    )
    return f'<div class="bars">{items}</div>'


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4} .bars{max-width:50em} .bar{display:flex;align-items:center;margin:2px 0}
.label{width:16em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.fill{background:#4a7bd0;height:14px;display:inline-block;margin:0 6px}
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


def render_html(report: dict, thumbs: dict[int, str | None] | None = None) -> str:
    """A self-contained page (inline CSS and SVG, images as data URIs, no scripts, no network)."""
    inv = (
        '<span class="ok">holds</span>' if report["invariant_holds"] else '<span class="bad">BROKEN</span>'
    )
    stages = [{"stage": k, **v} for k, v in report["stages"].items()]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mmcurate report</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>mmcurate report</h1><p>{html.escape(report['run_dir'])}: status {html.escape(str(report['status']))}</p>",
        f"<p>{report['rows']:,} input rows = {report['kept']:,} kept + {report['dropped']:,} dropped + "
        f"{report['failed']:,} failed &mdash; ledger invariant {inv}</p>",
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
        samples_html(report, thumbs or {}),
        _synthesis_html(report.get("synthesis")),
        "<h2>Models</h2>",
        _table([{"stage": k, **{kk: (vv if not isinstance(vv, dict) else json.dumps(vv)) for kk, vv in v.items()}}
                for k, v in report["models"].items()], ["stage", "model", "pretrained", "sha256", "weights", "label"])
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


def write_report(run_dir: RunDir) -> Path:
    """(Re)build report/report.json and report/index.html; return the page's path."""
    manifest = run_dir.read_manifest()
    stages = stages_of(manifest)
    report = build_report(run_dir, stages)
    atomic.write_json(run_dir.report_json, report)
    thumbs = thumbnails(run_dir, manifest, stages, report)
    page = run_dir.report_page
    atomic.write_with(page, lambda tmp: Path(tmp).write_text(render_html(report, thumbs), encoding="utf-8"))
    return page

