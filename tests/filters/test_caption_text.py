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
