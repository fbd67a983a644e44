"""What a `--where` cut of a finished run asks for, and how much of it the run can export as it is.

A cut chooses among the ledger's rows. A row the run kept is in it when the expression matches.
A row dropped by a score threshold (a stage's `Threshold`) is in it when the expression matches
and names that score, or the row's reason, status or stage: `clip_score > 0.6` takes back the
`low_clip_score` rows over 0.6 and never a `toxic_caption` row; `reason = 'low_clip_score'` takes
back every one. Every other row the expression matches (failed, a duplicate, dropped by a rule or
by a threshold the cut does not name) stays out, and the summary says so.

A row taken back is exported only when no stage that decides samples came after the one that
dropped it. Otherwise it never passed the later checks (safety) nor edits (faces blurred, PII
redacted): it needs a rerun with the looser threshold, which redoes only the stages from that one
on, and the summary gives the command.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from mmcurate.schemas import columns as C
from mmcurate.schemas.errors import ConfigError, MmcurateError
from mmcurate.stages import thresholds
from mmcurate.stages.base import Stage

EXPORT, RERUN, OUT = "export", "rerun", "out"
SELECTORS = {C.REASON, C.STATUS, C.STAGE}  # a cut naming these may take back any threshold's rows
CUT = "_cut"  # the column `classify` adds


class PartialCutError(MmcurateError):
    """A cut asks for rows the run cannot export as it is; nothing was written."""

    exit_code = 3


def where_expr(where: str) -> pl.Expr:
    """A polars SQL expression over ledger columns (scores flattened), or exit 2 naming --where."""
    try:
        return pl.sql_expr(where)
    except Exception as err:  # polars raises several kinds for a bad expression
        raise ConfigError(f"--where {where!r}: not a valid expression ({err})") from None


def classify(ledger: pl.DataFrame, stages: Sequence[Stage], where: str) -> pl.DataFrame:
    """The ledger rows (scores flattened) `where` matches, each with `_cut`: export, rerun or out."""
    expr = where_expr(where)
    named = set(expr.meta.root_names())
    order = {s.name: i for i, s in enumerate(stages)}
    last_gate = max((i for i, s in enumerate(stages) if s.decides_samples), default=-1)
    back = {r: s for r, (s, t) in thresholds(stages).items() if t.score in named or named & SELECTORS}
    ready = [r for r, s in back.items() if order[s.name] >= last_gate]
    dropped = pl.col(C.STATUS) == C.DROPPED
    try:
        matched = ledger.filter(expr)
    except pl.exceptions.PolarsError as err:
        raise ConfigError(f"--where {where!r}: {err} (columns: {', '.join(ledger.columns)})") from None
    return matched.with_columns(
        pl.when(pl.col(C.STATUS) == C.KEPT).then(pl.lit(EXPORT))
        .when(dropped & pl.col(C.REASON).is_in(ready)).then(pl.lit(EXPORT))
        .when(dropped & pl.col(C.REASON).is_in(sorted(back))).then(pl.lit(RERUN))
        .otherwise(pl.lit(OUT)).alias(CUT))


@dataclass
class CutSummary:
    """How much of a cut the run can export, and why not the rest (`add` each shard's `classify`)."""

    where: str
    exportable: int = 0
    rerun: dict[str, dict] = field(default_factory=dict)  # reason -> rows, stage, lowest and highest score
    out: dict[str, int] = field(default_factory=dict)  # reason (or status) -> rows

    @property
    def matched(self) -> int:
        return self.exportable + sum(r["rows"] for r in self.rerun.values()) + sum(self.out.values())

    @property
    def complete(self) -> bool:
        return not self.rerun

    def add(self, rows: pl.DataFrame, stages: Sequence[Stage]) -> None:
        self.exportable += rows.filter(pl.col(CUT) == EXPORT).height
        for reason, status, n in rows.filter(pl.col(CUT) == OUT).group_by(C.REASON, C.STATUS).len().iter_rows():
            key = reason or status
            self.out[key] = self.out.get(key, 0) + n
        taken = thresholds(stages)
        for reason in rows.filter(pl.col(CUT) == RERUN)[C.REASON].unique().sort().to_list():
            stage, t = taken[reason]
            scores = rows.filter((pl.col(CUT) == RERUN) & (pl.col(C.REASON) == reason))[t.score]
            got = self.rerun.setdefault(reason, {"rows": 0, "stage": stage.name, "score": t.score,
                                                 "lowest": math.inf, "highest": -math.inf})
            got["rows"] += len(scores)
            if scores.null_count() < len(scores) and scores.dtype.is_numeric():
                got["lowest"] = min(got["lowest"], float(scores.min()))
                got["highest"] = max(got["highest"], float(scores.max()))

    def settings(self, stages: Sequence[Stage], config: dict) -> list[str]:
        """The `--set` overrides under which a rerun keeps every row this cut takes back."""
        out = []
        for reason, got in sorted(self.rerun.items()):
            _, t = thresholds(stages)[reason]
            if t.key is None or not math.isfinite(got["lowest"]):
                continue
            if t.unset and _dotted(config, t.unset) is not None:
                out.append(f"{t.unset}=null")
            if t.kind == "min":  # rows under it go: the lowest taken back stays
                value = math.floor(got["lowest"] * 1e4) / 1e4
            else:  # rows over it go: the highest taken back stays
                value = math.floor(got["highest"] * 1e4) / 1e4 + 1e-4
            out.append(f"{t.key}={value:.4f}")
        return out

    def lines(self, run_dir: Path | str, stages: Sequence[Stage], config: dict) -> list[str]:
        """What the command line says of this cut: counts, the rerun's command, why rows stay out."""
        lines = [f"--where {self.where!r}: {self.matched:,} rows match; {self.exportable:,} can be exported as the "
                 "run left them"]
        order = [s.name for s in stages]
        for reason, got in sorted(self.rerun.items()):
            later = [s.name for s in stages[order.index(got["stage"]) + 1:] if s.decides_samples]
            span = f" ({got['score']} {got['lowest']:.4g} to {got['highest']:.4g})" if math.isfinite(got["lowest"]) else ""
            lines.append(f"  {got['rows']:,} {reason}{span}: dropped by {got['stage']}, so never through {', '.join(later)}")
        loose = {r for r in self.rerun if thresholds(stages)[r][1].key is None}
        for reason in sorted(loose):  # a cluster, not a number: the user chooses the setting
            lines.append(f"    {reason} has no single threshold: change {thresholds(stages)[reason][0].settings[0]} "
                         "in the command below")
        if self.rerun:
            sets = "".join(f" --set {s}" for s in self.settings(stages, config))
            lines.append(f"    to take them in: mmcurate run {run_dir}{sets} --force  (redoes "
                         f"{', '.join(sorted({g['stage'] for g in self.rerun.values()}))} and what follows, and changes "
                         "the run's kept rows: copy the run dir first to keep both)")
        if self.out:
            ranked = sorted(self.out.items(), key=lambda kv: (-kv[1], kv[0]))
            shown = ", ".join(f"{n:,} {why}" for why, n in ranked[:6]) + (", ..." if len(ranked) > 6 else "")
            lines.append(f"  {sum(self.out.values()):,} stay out: {shown} (failures, duplicates and rules never come "
                         "back; a threshold's drops only when the cut names its score)")
        return lines

    def as_json(self) -> dict:
        rerun = {r: {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in g.items()}
                 for r, g in self.rerun.items()}
        return {"where": self.where, "matched": self.matched, "exportable": self.exportable, "rerun": rerun,
                "out": dict(self.out)}


def summarize(ledgers: Iterable[pl.DataFrame], stages: Sequence[Stage], where: str) -> CutSummary:
    """The summary of `where` over a run's ledger shards (scores flattened)."""
    summary = CutSummary(where)
    for ledger in ledgers:
        summary.add(classify(ledger, stages, where), stages)
    return summary


def _dotted(config: dict, key: str):
    node = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
