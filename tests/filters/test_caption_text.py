"""Caption boilerplate reasons and statistics."""

from __future__ import annotations

import pytest

from mmcurate.filters.caption_text import boilerplate, stats

CASES = {
    "IMG_1234.jpg": "filename_caption",
    "DSC00012": "filename_caption",
    "image (3).png": "filename_caption",
    "https://cdn.example.com/a/b.jpg": "url_caption",
    "www.example.com/photos": "url_caption",
    "Image": "generic_caption",
    "untitled": "generic_caption",
    "No description.": "generic_caption",
    "2019-07-14 13:45:02 0042": "mostly_digits",
    "cat cat cat cat cat cat dog": "repetitive_caption",
    "a dog catching a frisbee in the park": None,
    "iPhone 15 Pro Max 256GB in blue titanium": None,  # numbers, but mostly words
    "the Model 3 parked by the 2nd Avenue station at 5pm": None,
    "photo of a cat on a sofa": None,
    "new new york skyline": None,  # a repeat, below the share
}


@pytest.mark.parametrize("caption,reason", CASES.items())
def test_reasons(caption, reason):
    found = boilerplate(caption, stats(caption), 0.5, 0.5, 4)
    assert (found[0] if found else None) == reason


def test_statistics():
    s = stats("A cat, a cat and 2 dogs")
    assert s.words == 7 and s.chars == 23
    assert s.top_word_fraction == pytest.approx(2 / 7)
    assert 0 < s.digit_fraction < 0.1 and s.alpha_fraction > 0.8


WORDS = {
    "一只橘色的猫躺在窗台上晒太阳": 14,  # Chinese: each Han character is a word
    "窓辺で日向ぼっこをする茶色の猫": 15,  # Japanese: each kanji and kana
    "コーヒーとケーキ": 5,  # the long-vowel mark ー stays with its kana
    "창가에서 햇볕을 쬐고 있는 주황색 고양이": 6,  # Korean spaces its words
    "แมวสีส้มนอนอาบแดดอยู่บนขอบหน้าต่าง": 10,  # Thai: 28 letters (marks aside), one word per 3
    "แมว": 1,
    "iPhone 15 的照片": 5,
    "राम की किताब का रंग": 5,  # vowel signs belong to their word
    "I ❤️ you": 2,  # the emoji's variation selector is no word
}


@pytest.mark.parametrize("caption,n", WORDS.items())
def test_words_of_scripts_without_spaces(caption, n):
    assert stats(caption).words == n


@pytest.mark.parametrize("caption,reason", {
    "テーブルの上のコップの中の水": None,  # の is 4 of 13 words
    "母の日の花": None,  # 2 of 5: の between single kanji is as often as it gets
    "我的猫的玩具的颜色": None,
    "スーパーマーケットのコーヒー": None,
    "राम की किताब का रंग और किताब की कीमत": None,  # का, की, के are words, not one repeated क
    "哈哈哈哈哈哈": "repetitive_caption",
    "猫猫猫猫猫猫猫狗": "repetitive_caption",
    "ขายขายขายขาย": "repetitive_caption",
}.items())
def test_repetition_in_scripts_without_spaces(caption, reason):
    found = boilerplate(caption, stats(caption), 0.5, 0.5, 4)
    assert (found[0] if found else None) == reason
