"""The one contract of every filter: per-row scores and, where it decides, a reason and a detail.

A filter is a class in a file of its own in this folder; its stage finds it there by name (no
registry, no list to edit). It reads a batch of Arrow rows and returns `Verdicts`: what it
measured for every row (its `fields`) and, where it objects, why. The stage around it does the
bookkeeping: a row that some check could not judge fails (the first such check names it),
otherwise the first check that objects drops it, and a kept row a check changed (faces blurred)
says so in its detail. Models are found and hashed on the driver in `prepare()` and loaded once
per worker in `setup()`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from mmcurate.schemas.config import Config


@dataclass
class Verdicts:
    """What one check says about a batch of rows; every sequence holds one entry per row."""

    scores: Mapping[str, Any] = field(default_factory=dict)  # column -> values (list, numpy or Arrow)
    reasons: Sequence[str | None] | None = None  # why each row should go; None: no objection
    details: Sequence[str | None] | None = None  # the sentence that goes with each reason
    failed: bool | Sequence[bool] = False  # whether a removal is a failure (could not judge) or a drop
    notes: Sequence[str | None] | None = None  # said in the detail of a kept row this check changed
    data: Mapping[str, Any] = field(default_factory=dict)  # data columns it rewrote (faces blurred)
    actions: Mapping[str, Sequence[str | None]] = field(default_factory=dict)  # column -> what it did to a kept row


@dataclass(frozen=True)
class Histogram:
    """A score the report draws, with the threshold in force (a config key, or a score that holds it)."""

    score: str
    threshold_key: str | None = None
    kind: str = ""  # what the threshold means: min, max, ...
    threshold_score: str | None = None  # a score column holding the threshold the run chose (a percentile's value)


@dataclass(frozen=True)
class Threshold:
    """A reason a score threshold decides: the score, the config key holding the threshold and
    whether rows under (`min`) or over (`max`) it go. An `export --where` cut that names the score
    takes such rows back; `unset` is a key that must be cleared to set this one (a percentile)."""

    reason: str
    score: str
    key: str | None = None  # None: no single key decides it (a cluster)
    kind: str = "min"
    unset: str | None = None


class Filter:
    """Base of every filter; a subclass sets the class attributes and `apply`, and nothing else."""

    stage: ClassVar[str]  # the stage that runs it, as the ledger names it
    name: ClassVar[str]  # its key in the stage's manifest entry and fingerprint
    section: ClassVar[str]  # its config section, dotted (quality.text); `enabled` is read there
    order: ClassVar[int] = 100  # its place among the stage's filters: earlier objections win
    fields: ClassVar[tuple[pa.Field, ...]] = ()  # its scores: columns of the stage's output and the ledger
    # whether its columns stay (null) while it is off: only for filters older than this contract, whose
    # ledgers always had them; a new filter changes nothing, not even a column, for runs that leave it off
    columns_when_off: ClassVar[bool] = False
    needs: ClassVar[tuple[str, ...]] = ()  # data columns of earlier stages it reads
    settings: ClassVar[tuple[str, ...] | None] = None  # dotted keys it decides by (audit --explain); None: section
    thresholds: ClassVar[tuple[Threshold, ...]] = ()  # reasons a score threshold decides (export --where)
    histograms: ClassVar[tuple[Histogram, ...]] = ()  # scores the report draws

    def __init__(self, config: Config):
        self.config = config

    @property
    def options(self) -> Any:
        """This filter's section of the config."""
        node: Any = self.config
        for part in self.section.split("."):
            node = getattr(node, part)
        return node

    @property
    def enabled(self) -> bool:
        return bool(self.options.enabled)

    def explained_by(self) -> tuple[str, ...]:
        """The dotted config keys `audit --explain` shows beside this filter's decisions."""
        return self.settings if self.settings is not None else (self.section,)

    def fingerprint(self) -> dict:
        """What this filter's output depends on. Nothing while it is off, so that a filter added to
        mmcurate never changes the fingerprint (and so redoes the work) of an existing run dir. The
        filters older than this contract override it to give exactly what their stage's fingerprint
        held before (`tests/stages/test_fingerprints.py`), on or off."""
        return {self.name: self.options.model_dump(mode="json")} if self.enabled else {}

    def prepare(self) -> dict:
        """Driver-side checks before any worker starts (find and hash weights); returns what the
        manifest records of its models ({} when none); raises ModelError naming the key."""
        return {}

    def setup(self) -> None:
        """Load models; called once per worker before `apply`."""

    def apply(self, rows: pa.Table) -> Verdicts:
        """The verdicts on every row of `rows` (which hold the scores of the filters before it)."""
        raise NotImplementedError
