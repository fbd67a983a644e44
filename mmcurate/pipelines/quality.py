"""Caption and image quality before any model runs: DataComp's basic filtering and caption boilerplate.

Runs right after download (it needs the original image sizes and nothing decoded), so the
expensive stages never see what it drops. Every row gets its caption statistics and (with
basic filtering on) its language and confidence in the ledger, dropped or not.
"""

from __future__ import annotations

import pyarrow as pa

from mmcurate.filters import caption_text
from mmcurate.filters.basic import basic_reason
from mmcurate.pipelines.stage import Stage, decisions
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import Config

STAT_COLUMNS = {
    C.CAPTION_WORDS: "words",
    C.CAPTION_CHARS: "chars",
    C.CAPTION_DIGIT_FRACTION: "digit_fraction",
    C.CAPTION_ALPHA_FRACTION: "alpha_fraction",
    C.CAPTION_TOP_WORD_FRACTION: "top_word_fraction",
}


class QualityStage(Stage):
    """Drops boilerplate captions (quality.text) and what DataComp's basic filter drops (quality.basic)."""

    name = "quality"
    version = "1"
    output_schema = C.QUALITY_SCHEMA
    score_columns = (*STAT_COLUMNS, C.LANGUAGE, C.LANGUAGE_CONFIDENCE)
    input_columns = (C.ORIGINAL_WIDTH, C.ORIGINAL_HEIGHT)

    @classmethod
    def enabled(cls, config: Config) -> bool:
        return config.quality.basic.enabled or config.quality.text.enabled

    def config_sections(self) -> dict:
        q = self.config.quality
        return {"basic": q.basic.model_dump(), "language": q.language.model_dump(), "text": q.text.model_dump()}

    def process(self, rows: pa.Table) -> pa.Table:
        q = self.config.quality
        captions = rows[C.CAPTION].to_pylist()
        stats = [caption_text.stats(c) for c in captions]
        if q.basic.enabled and q.basic.languages:
            from mmcurate.filters.language import identify

            langs = identify(captions, q.language.accuracy)
        else:
            langs = [(None, None)] * len(captions)
        widths = rows[C.ORIGINAL_WIDTH].to_pylist()
        heights = rows[C.ORIGINAL_HEIGHT].to_pylist()
        status, reason, detail = [], [], []
        for cap, s, (lang, conf), w, h in zip(captions, stats, langs, widths, heights):
            found = None
            if q.text.enabled:
                found = caption_text.boilerplate(cap, s, q.text.max_digit_fraction, q.text.max_repeat_fraction,
                                                 q.text.min_words_for_repeat)
            if found is None and q.basic.enabled:
                found = basic_reason(
                    s, lang, conf or 0.0, w or 0, h or 0,
                    languages=q.basic.languages, min_confidence=q.language.min_confidence,
                    min_words=q.basic.min_words, min_chars=q.basic.min_chars,
                    min_side=q.basic.min_side, max_aspect=q.basic.max_aspect,
                )
            status.append(C.DROPPED if found else C.KEPT)
            reason.append(found[0] if found else None)
            detail.append(found[1] if found else None)
        cols = decisions(rows, status, reason, detail)
        for column, attr in STAT_COLUMNS.items():
            cols[column] = pa.array([getattr(s, attr) for s in stats], self.output_schema.field(column).type)
        cols[C.LANGUAGE] = pa.array([lang for lang, _ in langs], pa.string())
        cols[C.LANGUAGE_CONFIDENCE] = pa.array([conf for _, conf in langs], pa.float32())
        return pa.table(cols, schema=self.output_schema)
