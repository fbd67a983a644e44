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
    fields = (
        pa.field(C.CAPTION_WORDS, pa.int32()),
        pa.field(C.CAPTION_CHARS, pa.int32()),
        pa.field(C.CAPTION_DIGIT_FRACTION, pa.float32()),
        pa.field(C.CAPTION_ALPHA_FRACTION, pa.float32()),
        pa.field(C.CAPTION_TOP_WORD_FRACTION, pa.float32()),
    )
    histograms = (Histogram(C.CAPTION_WORDS, "quality.basic.min_words", "min"),)
    input_columns = ()

    def measure(self, rows: pa.Table) -> dict[str, Sequence]:
        stats = [caption_text.stats(c) for c in rows[C.CAPTION].to_pylist()]
        return {column: [getattr(s, attr) for s in stats] for column, attr in caption_text.STAT_COLUMNS.items()}
