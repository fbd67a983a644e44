"""The report: report.json and a self-contained index.html, both built from the ledger and manifest."""

from __future__ import annotations

import html
import json
from pathlib import Path

import polars as pl

from mmcurate import atomic
from mmcurate.jobs.rundir import RunDir
from mmcurate.schemas import columns as C


def build_report(run_dir: RunDir) -> dict:
    """The report's numbers, computed from the ledger (the source of truth) and the manifest."""
    manifest = run_dir.read_manifest()
    ledger = pl.scan_parquet(run_dir.ledger)
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
    for name, info in manifest.get("stages", {}).items():
        if info.get("status") != "done":
            continue
        remaining -= removed_by_stage.get(name, 0)
        funnel.append({"stage": name, "rows": remaining})
    return {
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
    }


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
"""


def render_html(report: dict) -> str:
    """A self-contained page (inline CSS, no scripts, no network) showing the report."""
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
    report = build_report(run_dir)
    atomic.write_json(run_dir.report / "report.json", report)
    page = run_dir.report / "index.html"
    atomic.write_with(page, lambda tmp: Path(tmp).write_text(render_html(report), encoding="utf-8"))
    return page

