"""Caption and image quality before any model runs: caption statistics, then the quality filters.

Runs right after download (it needs the original image sizes and nothing decoded), so the
expensive stages never see what it drops. Every row gets its caption statistics; its filters
(`filters/*.py` whose stage is "quality": boilerplate captions, DataComp's basic filtering, ...)
add their scores and decide, the first objection winning.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from mmcurate.filters import caption_text
from mmcurate.filters.base import Histogram
from mmcurate.schemas import columns as C
from mmcurate.stages.base import FilterStage


class QualityStage(FilterStage):
    """Caption statistics for every row, and whatever the enabled quality filters drop."""

    name = "quality"
    version = "1"
    fields = caption_text.STAT_FIELDS
    histograms = (Histogram(C.CAPTION_WORDS, "quality.basic.min_words", "min"),)
    input_columns = ()

    def measure(self, rows: pa.Table) -> dict[str, Sequence]:
        return caption_text.stats_columns(rows[C.CAPTION].to_pylist())
