"""DataComp's "basic filtering": caption language and length, image size and aspect ratio.

As DataComp defines it: the caption is in one of the wanted languages (English there), has more
than 2 words and more than 5 characters; the image's smaller side is at least 200 px and its
aspect ratio below 3. Sizes are the original image's, as downloaded, before any resizing.
"""

from __future__ import annotations

from mmcurate.filters.caption_text import TextStats


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
    if s.words < min_words or s.chars < min_chars:
        return "caption_too_short", f"{s.words} words, {s.chars} characters (min {min_words} words, {min_chars} characters)"
    if languages and (language not in languages or confidence < min_confidence):
        found = f"{language} ({confidence:.2f})" if language else "unknown"
        return "wrong_language", f"caption language {found}, wanted {', '.join(languages)}"
    side = min(width, height)
    if side < min_side:
        return "image_too_small", f"original image {width}x{height}, smaller side {side} < {min_side} px"
    aspect = max(width, height) / max(side, 1)
    if aspect >= max_aspect:
        return "extreme_aspect_ratio", f"original image {width}x{height}, aspect ratio {aspect:.2f} >= {max_aspect}"
    return None
