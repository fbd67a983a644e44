"""Heads on the CLIP image embedding, per shard: its filters (`filters/embedding_head.py`: the
LAION-style aesthetic score, a watermark probability) each score every row and decide by a threshold."""

from __future__ import annotations

from mmcurate.stages.base import FilterStage


class ClipHeadsStage(FilterStage):
    """LAION-style aesthetic score (`low_aesthetic_score`) and watermark probability (`watermark`)."""

    name = "clip_heads"
    version = "1"
