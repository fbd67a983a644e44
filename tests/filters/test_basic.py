"""DataComp's basic filter: each rule at its boundary."""

from __future__ import annotations

import pytest

from mmcurate.filters.basic import basic_reason
from mmcurate.filters.caption_text import stats
from mmcurate.filters.language import identify
from mmcurate.schemas.sections import LanguageConfig

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


# natural captions, and short ones, in scripts without spaces (Korean has them)
LONG = {"zh": "一只橘色的猫躺在窗台上晒太阳", "ja": "窓辺で日向ぼっこをする茶色の猫",
        "ko": "창가에서 햇볕을 쬐고 있는 주황색 고양이", "th": "แมวสีส้มนอนอาบแดดอยู่บนขอบหน้าต่าง"}
SHORT = {"zh": "红车", "ja": "ねこ", "ko": "고양이", "th": "แมว"}


@pytest.fixture(scope="module")
def identified():
    texts = [*LONG.values(), *SHORT.values()]
    return dict(zip(texts, identify(texts, LanguageConfig().accuracy)))


def cjk_reason(caption, identified, languages):
    language, conf = identified[caption]
    found = basic_reason(stats(caption), language, conf, 640, 480, **{**RULES, "languages": languages})
    return found[0] if found else None


@pytest.mark.parametrize("lang", LONG)
def test_scripts_without_spaces_in_and_out_of_the_list(lang, identified):
    assert identified[LONG[lang]][0] == lang and identified[SHORT[lang]][0] == lang
    assert cjk_reason(LONG[lang], identified, [lang]) is None
    assert cjk_reason(LONG[lang], identified, ["en", "zh", "ja", "ko", "th"]) is None
    assert cjk_reason(SHORT[lang], identified, [lang]) == "caption_too_short"
    assert cjk_reason(LONG[lang], identified, ["en"]) == "wrong_language"
    assert cjk_reason(SHORT[lang], identified, ["en"]) == "wrong_language"  # the script says it: language first


def test_short_caption_of_an_unsure_language_is_too_short():
    # lingua guesses "red car" is Welsh at 0.06: too short to tell, so the length is the reason
    assert reason("red car", lang="cy", conf=0.06) == "caption_too_short"
    assert reason("红车", lang="zh", conf=1.0) == "wrong_language"
    assert reason("红色的车", lang="zh", conf=1.0) == "wrong_language"
    assert reason("一只橘色的猫", lang="en", conf=0.95) is None  # 6 characters, 6 words
