"""The stages of a run, in order. Each is plain Python over Arrow; the engine runs them on Ray.

A stage's file is named as the ledger names it. A filter is not a stage: it is one file in
mmcurate/filters, found by the stage that runs it.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmcurate.filters.base import Threshold
from mmcurate.schemas.config import Config
from mmcurate.stages.base import Stage
from mmcurate.stages.clip import ClipFilterStage
from mmcurate.stages.clip_embed import ClipEmbedStage
from mmcurate.stages.clip_heads import ClipHeadsStage
from mmcurate.stages.dedup.stage import DedupStage
from mmcurate.stages.download import DownloadStage
from mmcurate.stages.features import FeaturesStage
from mmcurate.stages.image_based import ImageBasedStage
from mmcurate.stages.load import LoadStage
from mmcurate.stages.privacy import PrivacyStage
from mmcurate.stages.quality import QualityStage
from mmcurate.stages.safety import SafetyStage
from mmcurate.stages.semantic_dedup import SemanticDedupStage
from mmcurate.stages.synthesis.stage import SynthesisStage

# Stages after ingest, in pipeline order.
STAGE_CLASSES: list[type[Stage]] = [
    DownloadStage,
    LoadStage,  # in download's place for a pool already downloaded
    QualityStage,
    FeaturesStage,
    DedupStage,
    ClipEmbedStage,
    ClipFilterStage,
    SemanticDedupStage,
    ImageBasedStage,
    ClipHeadsStage,
    SafetyStage,
    PrivacyStage,
    SynthesisStage,
]

# Config sections whose stages have not landed yet: a run records them as unavailable.
PLANNED_SECTIONS: tuple[str, ...] = ()


def build_stages(config: Config) -> list[Stage]:
    """The stages this config runs, in order."""
    return [cls(config) for cls in STAGE_CLASSES if cls.enabled(config)]


def last_writer(stages: Sequence[Stage], column: str) -> Stage | None:
    """The last stage that writes data `column`: exports and reports take that column from it
    (images with faces blurred, captions with PII redacted)."""
    writers = [s for s in stages if column in s.data_columns]
    return writers[-1] if writers else None


def origin_columns(stages: Sequence[Stage]) -> list[str]:
    """Ingest's columns naming where a row came from (a pool's key and uid), which the ledger and
    every export carry; none for a URL list's run."""
    return list(dict.fromkeys(c for s in stages for c in s.origin_columns))


def thresholds(stages: Sequence[Stage]) -> dict[str, tuple[Stage, Threshold]]:
    """Reasons that come from a score threshold, with the stage that gives each: a `--where` cut
    that names the score may take such rows back in."""
    return {t.reason: (s, t) for s in stages for t in s.thresholds}
