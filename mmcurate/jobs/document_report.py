"""The report's documents section (a documents run: input.format mmc4, obelics): the documents funnel
and reasons, images and words per document, and examples of the documents dropped or failed, each
with its reason; all read from documents.parquet, beside the ledger.

documents.parquet holds no texts; every read below is a lazy aggregate of a few of its columns, or
a batch-by-batch sample (memory: a few rows per reason), whatever the number of documents. Columns
are read by name: a column an earlier or later version lacks is left out, and the reasons are the
file's own, never a list of ours.
"""

from __future__ import annotations

import math

import polars as pl

from mmcurate.engine.rundir import INGEST, RunDir
from mmcurate.jobs.examples import sample_per_reason
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import lookup
from mmcurate.storage import paths

BINS = 30
# the histograms drawn, where documents.parquet has the column: (column, threshold's config key); the
# words of the texts the paragraph rules left, where it has them, are what documents.min_words cuts on
HISTOGRAMS = (
    (C.IMAGES_IN, None),
    (C.IMAGES_KEPT, "documents.min_images"),
    (C.WORDS, "documents.min_words"),
    (C.WORDS_KEPT, "documents.min_words"),
)
# what an example shows first, where the file has it; then any other plain column it has (dup_of, ...)
EXAMPLE_COLUMNS = (C.REASON, C.DOCUMENT, C.DOCUMENT_ID, C.URL, C.STATUS, C.STAGE, C.DETAIL, C.IMAGES_IN,
                   C.IMAGES_KEPT, C.WORDS)


def is_documents_run(run_dir: RunDir) -> bool:
    """Whether the run wrote documents.parquet (a documents run that reached its end)."""
    return run_dir.documents_ledger.exists()


def scan_documents(run_dir: RunDir) -> pl.LazyFrame:
    """documents.parquet, lazily."""
    return paths.scan_parquet([run_dir.documents_ledger])


def document_report(run_dir: RunDir, manifest: dict, stage_order: list[str]) -> dict | None:
    """The report's `document_report` section, None for a pairs run (no documents in its manifest):

    `documents`, `kept`, `dropped`, `failed` counted from documents.parquet (`invariant_holds`: the
    manifest's counts, checked at the end of the run, are the same), `funnel` (documents left after
    each stage that removed some: ingest first, then in the run's stage order), `reasons` (stage,
    status, reason, documents), `histograms` (as the scores': edges and counts, integer bins) and
    `examples` (per reason, up to SAMPLES_PER_REASON documents: a reproducible sample, by number)."""
    if not manifest.get("documents") or not is_documents_run(run_dir):
        return None
    docs = scan_documents(run_dir)
    by_status = dict(docs.group_by(C.STATUS).len().collect().iter_rows())
    total = sum(by_status.values())
    counts = {"documents": total, **{s: by_status.get(s, 0) for s in C.STATUSES}}
    reasons = (docs.filter(pl.col(C.STATUS) != C.KEPT).group_by([C.STAGE, C.STATUS, C.REASON]).len()
               .sort(["len", C.STAGE, C.REASON], descending=[True, False, False]).collect()
               .rename({"len": "documents"}).to_dicts())
    removed: dict[str, int] = {}
    for r in reasons:
        removed[r[C.STAGE] or ""] = removed.get(r[C.STAGE] or "", 0) + r["documents"]
    rank = {s: i for i, s in enumerate([INGEST, *stage_order])}
    funnel, left = [{"stage": "input", "documents": total}], total
    for stage in sorted(removed, key=lambda s: (rank.get(s, len(rank)), s)):
        left -= removed[stage]
        funnel.append({"stage": stage or "(none)", "documents": left})
    return {
        **counts,
        "invariant_holds": all(manifest["documents"].get(k) == v for k, v in counts.items()),
        "funnel": funnel,
        "reasons": reasons,
        "histograms": _histograms(docs, manifest.get("config") or {}),
        "examples": _examples(run_dir, docs),
    }


def _histograms(docs: pl.LazyFrame, config: dict) -> list[dict]:
    """Per count column (images, words), over the documents ingest could read (not failed): its
    documents in bins of whole numbers (at most BINS of them), and the rule's minimum beside them.

    Two aggregating passes per column (range, then counts per bin); each bin [edge, next edge)."""
    have = set(docs.collect_schema().names())
    read = docs.filter(pl.col(C.STATUS) != C.FAILED)
    out = []
    for column, key in HISTOGRAMS:
        if column not in have:
            continue
        v = read.select(pl.col(column).cast(pl.Int64).alias("v")).drop_nulls()
        stats = v.select(pl.len().alias("n"), pl.col("v").min().alias("lo"), pl.col("v").max().alias("hi")
                         ).collect().row(0, named=True)
        if not stats["n"]:
            continue
        threshold = None if column == C.WORDS and C.WORDS_KEPT in have else lookup(config, key)
        lo, hi = int(stats["lo"]), int(stats["hi"])
        if isinstance(threshold, int | float):
            lo, hi = min(lo, math.floor(threshold)), max(hi, math.ceil(threshold))
        width = max(1, math.ceil((hi - lo + 1) / BINS))
        bins = math.ceil((hi - lo + 1) / width)
        counts = [0] * bins
        for b, n in v.group_by(((pl.col("v") - lo) // width).alias("b")).len().collect().iter_rows():
            counts[int(b)] = n
        out.append({"score": column, "rows": stats["n"], "unit": "documents", "threshold": threshold,
                    "threshold_kind": "min", "edges": [lo + i * width for i in range(bins + 1)], "counts": counts})
    return out


def _examples(run_dir: RunDir, docs: pl.LazyFrame) -> dict[str, list[dict]]:
    """Up to SAMPLES_PER_REASON documents of each reason (dropped or failed), chosen by a seeded
    key of their numbers (the same run: the same documents), read batch by batch; their plain
    columns (no lists), in document order."""
    batches = paths.parquet_file(run_dir.documents_ledger).iter_batches(
        batch_size=65_536, columns=[C.DOCUMENT, C.STATUS, C.REASON])
    best = sample_per_reason(batches, C.DOCUMENT, "not_kept")
    wanted = sorted(n for picked in best.values() for _, n, _ in picked)
    if not wanted:
        return {}
    schema = docs.collect_schema()
    plain = [c for c, t in schema.items() if not t.is_nested() and t != pl.Binary]
    columns = [c for c in EXAMPLE_COLUMNS if c in plain] + [c for c in plain if c not in EXAMPLE_COLUMNS]
    rows = docs.filter(pl.col(C.DOCUMENT).is_in(wanted)).select(columns).sort(C.DOCUMENT).collect()
    out: dict[str, list[dict]] = {}
    for row in rows.iter_rows(named=True):
        out.setdefault(str(row[C.REASON]), []).append(row)
    return dict(sorted(out.items()))

