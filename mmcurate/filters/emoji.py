"""Captions that are mostly emoji ("😍😍😍🔥🔥 wow"): little a model can learn the picture from.

The score is the share of a caption's visible characters that are emoji: pictographs, emoticons,
transport and map symbols, dingbats, weather and other symbols, flags (regional indicators) and
skin-tone modifiers, matched by Unicode block with no dependency. Spaces and the invisible parts
of emoji sequences (zero-width joiners, variation selectors, the keycap mark) count on neither
side, so a family emoji built of three people and two joiners is three emoji, not five
characters. Letters, digits, punctuation, `©` and `™` are not emoji.
"""

from __future__ import annotations

import re

import pyarrow as pa

from mmcurate.filters.base import Filter, Histogram, Threshold, Verdicts
from mmcurate.schemas import columns as C

EMOJI_FRACTION = "caption_emoji_fraction"  # this filter's score: emoji / visible characters
EMOJI = re.compile(
    "[\U0001F1E6-\U0001F1FF"  # regional indicators: flags
    "\U0001F300-\U0001F5FF"  # symbols and pictographs, skin tones
    "\U0001F600-\U0001F64F"  # emoticons
    "\U0001F680-\U0001F6FF"  # transport and map
    "\U0001F900-\U0001F9FF"  # supplemental symbols and pictographs
    "\U0001FA70-\U0001FAFF"  # symbols and pictographs extended-A
    "\u2600-\u27BF"  # miscellaneous symbols, dingbats
    "\u2B00-\u2BFF"  # arrows and stars (⭐, ⬛)
    "\u231A\u231B\u23E9-\u23FA]"  # watch, hourglass, media keys
)
INVISIBLE = re.compile("[\\s\u200D\uFE0E\uFE0F\u20E3]")


def emoji_fraction(caption: str) -> float:
    """Emoji among the caption's visible characters (0 for a caption with none)."""
    visible = INVISIBLE.sub("", caption)
    return len(EMOJI.findall(visible)) / len(visible) if visible else 0.0


class EmojiFilter(Filter):
    """Drops captions whose emoji share is over `quality.emoji.max_fraction`."""

    stage = "quality"
    name = "emoji"
    section = "quality.emoji"
    order = 15  # after boilerplate captions, before DataComp's word counts (emoji are no words there)
    fields = (pa.field(EMOJI_FRACTION, pa.float32()),)
    thresholds = (Threshold("emoji_caption", EMOJI_FRACTION, "quality.emoji.max_fraction", "max"),)
    histograms = (Histogram(EMOJI_FRACTION, "quality.emoji.max_fraction", "max"),)

    def apply(self, rows: pa.Table) -> Verdicts:
        limit = self.options.max_fraction
        fractions = [emoji_fraction(c) for c in rows[C.CAPTION].to_pylist()]
        return Verdicts(
            scores={EMOJI_FRACTION: fractions},
            reasons=["emoji_caption" if f > limit else None for f in fractions],
            details=[f"{f:.0%} of the caption's characters are emoji (max {limit:.0%})" if f > limit else None
                     for f in fractions],
        )
