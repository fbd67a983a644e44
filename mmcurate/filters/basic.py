"""DataComp's "basic filtering": caption language and length, image size and aspect ratio.

As DataComp defines it: the caption is in one of the wanted languages (English there), has more
than 2 words and more than 5 characters; the image's smaller side is at least 200 px and its
aspect ratio below 3. Sizes are the original image's, as downloaded, before any resizing.

The language is decided before the length, so a Chinese caption in an English run is
`wrong_language`, not `caption_too_short`; but a caption too short to tell its language by (lingua
calls "red car" Welsh, at 0.06) is `caption_too_short` unless lingua is SURE of its guess, as it is
where the script or the letters say it ("红车", "ねこ", "Straße"). Words are counted per script
(`caption_text.words`): each Han character or kana is one, a Thai run one per 3 letters.
"""

from __future__ import annotations

import pyarrow as pa

from mmcurate.filters.base import Filter, Histogram, Verdicts
from mmcurate.filters.caption_text import TextStats, stats_of
from mmcurate.schemas import columns as C

SURE = 0.9  # lingua's confidence that makes a too-short caption's language count


def basic_reason(
    s: TextStats,
    language: str | None,
    confidence: float,
    width: int,
    height: int,
    *,
    languages: list[str],
    min_confidence: float,
    min_words: int,
    min_chars: int,
    min_side: int,
    max_aspect: float,
) -> tuple[str, str] | None:
    """(reason, detail) for the first rule the row breaks, else None."""
    short = s.words < min_words or s.chars < min_chars
    wrong = bool(languages) and (language not in languages or confidence < min_confidence)
    if wrong and (not short or confidence >= SURE):
        found = f"{language} ({confidence:.2f})" if language else "unknown"
        return "wrong_language", f"caption language {found}, wanted {', '.join(languages)}"
    if short:
        return "caption_too_short", f"{s.words} words, {s.chars} characters (min {min_words} words, {min_chars} characters)"
    side = min(width, height)
    if side < min_side:
        return "image_too_small", f"original image {width}x{height}, smaller side {side} < {min_side} px"
    aspect = max(width, height) / max(side, 1)
    if aspect >= max_aspect:
        return "extreme_aspect_ratio", f"original image {width}x{height}, aspect ratio {aspect:.2f} >= {max_aspect}"
    return None


class BasicFilter(Filter):
    """DataComp's basic filtering; the caption's language and its confidence are its scores."""

    stage = "quality"
    columns_when_off = True
    name = "basic"
    section = "quality.basic"
    order = 20
    fields = (pa.field(C.LANGUAGE, pa.string()), pa.field(C.LANGUAGE_CONFIDENCE, pa.float32()))
    needs = (C.ORIGINAL_WIDTH, C.ORIGINAL_HEIGHT)
    settings = ("quality.basic", "quality.language")
    histograms = (Histogram(C.LANGUAGE_CONFIDENCE, "quality.language.min_confidence", "min"),)

    def fingerprint(self) -> dict:
        q = self.config.quality  # on or off, as before filters were files
        return {"basic": q.basic.model_dump(), "language": q.language.model_dump()}

    def apply(self, rows: pa.Table) -> Verdicts:
        b, lang = self.options, self.config.quality.language
        captions = rows[C.CAPTION].to_pylist()
        if b.languages:
            from mmcurate.filters.language import identify

            langs = identify(captions, lang.accuracy)
        else:
            langs = [(None, None)] * len(captions)
        found = [
            basic_reason(s, language, conf or 0.0, w or 0, h or 0, languages=b.languages,
                         min_confidence=lang.min_confidence, min_words=b.min_words, min_chars=b.min_chars,
                         min_side=b.min_side, max_aspect=b.max_aspect)
            for s, (language, conf), w, h in zip(stats_of(rows), langs, rows[C.ORIGINAL_WIDTH].to_pylist(),
                                                 rows[C.ORIGINAL_HEIGHT].to_pylist())
        ]
        return Verdicts(scores={C.LANGUAGE: [x for x, _ in langs], C.LANGUAGE_CONFIDENCE: [c for _, c in langs]},
                        reasons=[f[0] if f else None for f in found], details=[f[1] if f else None for f in found])
