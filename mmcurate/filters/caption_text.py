"""Caption text quality: statistics of every caption, and the boilerplate that says nothing.

Reasons (first that applies): `url_caption` (the caption is a URL), `filename_caption`
(`IMG_1234.jpg`, `DSC00012`, `image (3).png`), `generic_caption` ("image", "photo", "untitled",
"no description" ...), `mostly_digits`, `repetitive_caption` (one word takes most of it).

Words, for scripts written without spaces, by a rule per script rather than a segmenter (no
dictionary to install, the same count on every machine): each Han character, kana and the like
is one word, as word processors count CJK text (a long-vowel mark `ー` stays with its kana);
Thai, Lao, Khmer and Myanmar runs are one word per 3 letters, rounded up (their marks do not
count), about the length of a Thai word. Elsewhere a word is a run of letters, digits and their
combining marks, so Korean, which spaces its words, counts as written.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from functools import cache

import pyarrow as pa

from mmcurate.filters.base import Filter, Verdicts
from mmcurate.schemas import columns as C

# Han (with its extensions and compatibility forms), kana (not the middle dot ・), iteration marks 々〆〇
HAN_KANA = "\u3005-\u3007\u3041-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff" \
           "\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003ffff"
# Thai, Lao, Myanmar, Khmer: letters and their marks, not their digits and punctuation
SPACELESS = "\u0e01-\u0e3a\u0e40-\u0e4e\u0e81-\u0ece\u1000-\u103f\u1050-\u109d\u1780-\u17d3\u17dd"
SPACELESS_RUN = re.compile(f"[{SPACELESS}]+")
LETTERS_PER_WORD = 3  # of a Thai/Lao/Khmer/Myanmar run
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


@cache
def _word_pattern() -> re.Pattern:
    # combining marks continue a word (Devanagari's vowel signs, Arabic's harakat); built once per process
    cps = [cp for cp in (*range(0x300, 0x20000), *range(0xE0100, 0xE01F0)) if unicodedata.category(chr(cp))[0] == "M"]
    runs = [[cps[0], cps[0]]]
    for cp in cps[1:]:
        if cp == runs[-1][1] + 1:
            runs[-1][1] = cp
        else:
            runs.append([cp, cp])
    marks = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in runs)
    letter = f"[^\\W{HAN_KANA}{SPACELESS}]"
    return re.compile(f"[{HAN_KANA}][{marks}\u30fc\uff70]*|[{SPACELESS}]+|{letter}(?:{letter}|[{marks}])*")


def _pieces(run: str) -> list[str]:
    """A Thai/Lao/Khmer/Myanmar run in words of LETTERS_PER_WORD letters, each with its marks."""
    starts = [i for i, c in enumerate(run) if c.isalpha()][LETTERS_PER_WORD::LETTERS_PER_WORD]
    return [run[a:b] for a, b in zip([0, *starts], [*starts, len(run)])]


def words(caption: str) -> list[str]:
    """The caption's words, lower-cased, by the per-script rule above."""
    found = _word_pattern().findall(unicodedata.normalize("NFC", caption).lower())
    if not SPACELESS_RUN.search(caption):
        return found
    return [piece for w in found for piece in (_pieces(w) if SPACELESS_RUN.match(w) else [w])]


def stats(caption: str) -> TextStats:
    words_ = words(caption)
    visible = [c for c in caption if not c.isspace()]
    n = max(len(visible), 1)
    top = Counter(words_).most_common(1)[0][1] / len(words_) if words_ else 0.0
    return TextStats(
        words=len(words_),
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
