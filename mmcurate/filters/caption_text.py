"""Caption text quality: statistics of every caption, and the boilerplate that says nothing.

Reasons (first that applies): `url_caption` (the caption is a URL), `filename_caption`
(`IMG_1234.jpg`, `DSC00012`, `image (3).png`), `generic_caption` ("image", "photo", "untitled",
"no description" ...), `mostly_digits`, `repetitive_caption` (one word takes most of it).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields

import pyarrow as pa

from mmcurate.filters.base import Filter, Verdicts
from mmcurate.schemas import columns as C

WORD = re.compile(r"\w+", re.UNICODE)
URL = re.compile(r"^\s*(?:https?://|www\.)\S+\s*$", re.IGNORECASE)
FILENAME = re.compile(
    r"^\s*(?:[\w\-. ()]*\.(?:jpe?g|png|gif|webp|bmp|tiff?|heic|svg)"  # anything.ext
    r"|(?:img|dsc|dscn|dscf|pict?|p|photo|image|screenshot|scan|whatsapp image)[\s_\-]*[\d_\- ()]+)\s*$",
    re.IGNORECASE,
)
GENERIC = {
    "image", "images", "photo", "photos", "picture", "pictures", "pic", "img", "untitled", "untitled image",
    "no title", "no description", "no caption", "description", "caption", "thumbnail", "placeholder",
    "default", "null", "none", "n/a", "na", "stock photo", "stock image", "click to enlarge", "view image",
    "loading", "logo", "icon", "banner", "featured image", "image not found", "photo of", "image of",
}


@dataclass(frozen=True)
class TextStats:
    words: int
    chars: int
    digit_fraction: float  # of non-space characters
    alpha_fraction: float  # letters, of non-space characters
    top_word_fraction: float  # share of words taken by the most frequent word


# the quality stage's score column of each statistic (TextStats' fields, in order), measured for every caption
STAT_FIELDS = (
    pa.field(C.CAPTION_WORDS, pa.int32()),
    pa.field(C.CAPTION_CHARS, pa.int32()),
    pa.field(C.CAPTION_DIGIT_FRACTION, pa.float32()),
    pa.field(C.CAPTION_ALPHA_FRACTION, pa.float32()),
    pa.field(C.CAPTION_TOP_WORD_FRACTION, pa.float32()),
)


def stats(caption: str) -> TextStats:
    words = [w.lower() for w in WORD.findall(caption)]
    visible = [c for c in caption if not c.isspace()]
    n = max(len(visible), 1)
    top = Counter(words).most_common(1)[0][1] / len(words) if words else 0.0
    return TextStats(
        words=len(words),
        chars=len(caption.strip()),
        digit_fraction=sum(c.isdigit() for c in visible) / n,
        alpha_fraction=sum(c.isalpha() for c in visible) / n,
        top_word_fraction=top,
    )


def boilerplate(caption: str, s: TextStats, max_digit_fraction: float, max_repeat_fraction: float,
                min_words_for_repeat: int) -> tuple[str, str] | None:
    """(reason, detail) when the caption is boilerplate, else None."""
    text = caption.strip()
    if URL.match(text):
        return "url_caption", "the caption is a URL"
    if FILENAME.match(text):
        return "filename_caption", f"the caption is a file name: {text[:60]!r}"
    if re.sub(r"[\s\W_]+", " ", text.lower()).strip() in GENERIC:
        return "generic_caption", f"the caption says nothing about the image: {text[:60]!r}"
    if s.digit_fraction > max_digit_fraction:
        return "mostly_digits", f"{s.digit_fraction:.0%} of the caption's characters are digits (max {max_digit_fraction:.0%})"
    if s.words >= min_words_for_repeat and s.top_word_fraction > max_repeat_fraction:
        return "repetitive_caption", (
            f"one word is {s.top_word_fraction:.0%} of the caption's {s.words} words (max {max_repeat_fraction:.0%})"
        )
    return None


def stats_columns(captions: list[str]) -> dict[str, list]:
    """The statistics of every caption, as the quality stage's columns."""
    measured = [stats(c) for c in captions]
    return {f.name: [getattr(m, attr.name) for m in measured] for f, attr in zip(STAT_FIELDS, dataclass_fields(TextStats))}


def stats_of(rows: pa.Table) -> list[TextStats]:
    """The caption statistics the quality stage measured, back from its columns (exact: as computed)."""
    return [TextStats(*values) for values in zip(*(rows[f.name].to_pylist() for f in STAT_FIELDS))]


class TextFilter(Filter):
    """Drops boilerplate captions: URLs, file names, generic words, mostly digits, one repeated word."""

    stage = "quality"
    name = "text"
    section = "quality.text"
    order = 10

    def fingerprint(self) -> dict:
        return {"text": self.options.model_dump()}  # on or off, as before filters were files

    def apply(self, rows: pa.Table) -> Verdicts:
        t = self.options
        found = [boilerplate(c, s, t.max_digit_fraction, t.max_repeat_fraction, t.min_words_for_repeat)
                 for c, s in zip(rows[C.CAPTION].to_pylist(), stats_of(rows))]
        return Verdicts(reasons=[f[0] if f else None for f in found], details=[f[1] if f else None for f in found])
