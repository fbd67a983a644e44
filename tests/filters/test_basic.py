"""DataComp's basic filter: each rule at its boundary."""

from __future__ import annotations

from mmcurate.filters.basic import basic_reason
from mmcurate.filters.caption_text import stats

RULES = {"languages": ["en"], "min_confidence": 0.0, "min_words": 3, "min_chars": 6, "min_side": 200, "max_aspect": 3.0}


def reason(caption, lang="en", conf=0.9, w=640, h=480):
    found = basic_reason(stats(caption), lang, conf, w, h, **RULES)
    return found[0] if found else None


def test_each_rule():
    assert reason("a red car parked outside") is None
    assert reason("red car") == "caption_too_short"  # 2 words: DataComp wants more than 2
    assert reason("a b c") == "caption_too_short"  # 3 words but 5 characters
    assert reason("a b cd") is None  # 3 words, 6 characters
    assert reason("ein rotes Auto", lang="de") == "wrong_language"
    assert reason("a red car", lang=None, conf=0.0) == "wrong_language"
    assert reason("a red car", w=199, h=800) == "image_too_small"
    assert reason("a red car", w=200, h=599) is None
    assert reason("a red car", w=200, h=600) == "extreme_aspect_ratio"
    found = basic_reason(stats("a red car"), "en", 0.9, 900, 250, **RULES)
    assert found == ("extreme_aspect_ratio", "original image 900x250, aspect ratio 3.60 >= 3.0")


def test_confidence_floor_and_no_language_rule():
    low = basic_reason(stats("a red car"), "en", 0.2, 640, 480, **{**RULES, "min_confidence": 0.5})
    assert low[0] == "wrong_language" and "en (0.20)" in low[1]
    assert basic_reason(stats("ein rotes Auto"), "de", 0.9, 640, 480, **{**RULES, "languages": []}) is None
