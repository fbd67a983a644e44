"""Stage-by-stage progress of a run directory, read from its stats files (works mid-run)."""

from __future__ import annotations

import json

from mmcurate.engine.rundir import INGEST, RunDir
from mmcurate.schemas import columns as C

WHOLE_EXPORTS = ("hf", "llava")  # one folder or file per run, not one per shard
DOCUMENT_EXPORTS = ("mmc4", "obelics", "webdataset")  # of a documents run: whole, after documents.parquet
DOCUMENTS_STEP = "documents"  # stages/documents/: a shard per file of documents, counting documents


def run_status(run_dir: RunDir) -> dict:
    """Shards done / total and rows in / kept / dropped / failed, per stage; a documents run's documents
    in / kept / dropped / failed once its documents.parquet is written."""
    manifest = run_dir.read_manifest()
    total = run_dir.shard_count()
    stages = []
    stage_root = run_dir.stages
    documents_run = manifest.get("config", {}).get("input", {}).get("format") in ("mmc4", "obelics")
    whole = WHOLE_EXPORTS + (DOCUMENT_EXPORTS if documents_run else ())
    order = list(manifest.get("stage_order", [INGEST]))
    if documents_run and DOCUMENTS_STEP not in order:  # after the image stages, before the exports
        at = next((i for i, n in enumerate(order) if n.startswith("export-")), len(order))
        order.insert(at, DOCUMENTS_STEP)
    names = order + sorted(n for n in manifest.get("stages", {}) if n not in order)
    names += sorted(p.name for p in stage_root.iterdir() if p.is_dir() and p.name not in names) if stage_root.exists() else []
    for name in names:
        info = manifest.get("stages", {}).get(name, {})
        if info.get("status") == "unavailable":
            stages.append({"stage": name, "status": "unavailable"})
            continue
        row = {"stage": name, "shards_done": 0, "shards_total": total, "rows_in": 0, C.KEPT: 0, C.DROPPED: 0, C.FAILED: 0}
        if name == INGEST:
            row.update(shards_done=total if run_dir.ingest_done().exists() else 0)
            for key in ("rows_in", C.KEPT, C.FAILED):
                row[key] = info.get(key, 0)
        elif name.startswith("export-") and name.removeprefix("export-") in whole:
            # written whole, not shard by shard: the manifest says when it is done
            export = manifest.get("exports", {}).get(name.removeprefix("export-"), {})
            done = export.get("status") == "done"
            row.update(shards_done=int(done), shards_total=1, rows_in=export.get("rows", 0) if done else 0)
            row[C.KEPT] = row["rows_in"]
        else:
            if name == DOCUMENTS_STEP and documents_run:  # its rows are documents, its shards files of them
                row["shards_total"] = len(run_dir.documents_files())
            for stats_file in sorted(run_dir.stage_dir(name).glob("*.stats.json")) if run_dir.stage_dir(name).exists() else []:
                stats = json.loads(stats_file.read_text())
                row["shards_done"] += 1
                for key in ("rows_in", C.KEPT, C.DROPPED, C.FAILED):
                    row[key] += stats.get(key, 0)
        done = row["shards_total"] and row["shards_done"] == row["shards_total"]
        row["status"] = "done" if done else ("running" if row["shards_done"] else "pending")
        stages.append(row)
    documents = {"documents": manifest["documents"]} if manifest.get("documents") else {}  # in, kept, dropped, failed
    return {"run_dir": str(run_dir.root), "status": manifest.get("status"), "ledger": manifest.get("ledger"), "stages": stages,
            **documents}
