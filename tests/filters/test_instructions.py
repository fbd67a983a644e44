"""Validation of teacher answers: each failure seen in released datasets is caught, good answers pass."""

from __future__ import annotations

import json

import pytest

from mmcurate.filters import instructions as V

PROMPT = "A short note on what the image shows (for your orientation only): a red circle\n\nRespond with a JSON object"
SYSTEM = "You are looking at an image. Write a conversation between a person asking about the image and an assistant"


def check(shape, text, others=()):
    turns = V.parse(shape, text, "Describe the image in detail.")
    return V.problems(turns, shape=shape, prompt=PROMPT, system=SYSTEM, min_chars=2, max_chars=400,
                      other_questions=list(others))


GOOD_TURNS = json.dumps({"turns": [{"question": "What colour is the shape?", "answer": "It is red."},
                                   {"question": "How many shapes are there?", "answer": "Just one circle."}]})


def test_good_answers_pass_in_every_shape():
    assert check("turns", GOOD_TURNS) == []
    assert check("qa", '```json\n{"question": "Why is it round?", "answer": "Because it is a circle."}\n```') == []
    assert check("text", "A single red circle sits in the middle of a plain background.") == []


@pytest.mark.parametrize(("shape", "text", "reason"), [
    ("turns", "Sure! Here is a conversation: ...", "unparseable"),
    ("turns", '{"turns": []}', "bad_structure"),
    ("turns", json.dumps({"turns": [{"question": "q", "answer": "a"}] * 7}), "bad_structure"),
    ("qa", '{"question": "Why?"}', "bad_structure"),
])
def test_unusable_structures_raise_their_reason(shape, text, reason):
    with pytest.raises(ValueError, match=f"^{reason}:"):
        V.parse(shape, text)


@pytest.mark.parametrize(("shape", "text", "reason"), [
    ("text", "I'm sorry, but I can't help with identifying people in images.", "refusal"),
    ("text", "As an AI, I cannot see images.", "refusal"),
    ("text", "According to the caption, the image shows a red circle on white.", "mentions_caption"),
    ("text", "The description says there is a red circle.", "mentions_caption"),
    ("text", "Sure. A short note on what the image shows for your orientation only a red circle respond with", "prompt_echo"),
    ("text", "It is a red circle. " * 12, "repetition"),
    ("text", "circle " * 80, "too_long"),
    ("text", "A", "too_short"),
    ("turns", json.dumps({"turns": [{"question": "What colour is it?", "answer": "Red."},
                                    {"question": "what colour is it", "answer": "Still red."}]}), "duplicate_question"),
    ("turns", json.dumps({"turns": [{"question": "What colour is the circle here?", "answer": "Red."},
                                    {"question": "What colour is the circle?", "answer": "Red."}]}), "similar_question"),
    ("turns", json.dumps({"turns": [{"question": "Where is the <image> token?", "answer": "Here."}]}), "llava_format"),
    ("turns", json.dumps({"turns": [{"question": "What is it?", "answer": "  "}]}), "llava_format"),
])
def test_each_failure_is_caught(shape, text, reason):
    assert reason in check(shape, text)


def test_questions_are_compared_with_the_same_images_other_questions():
    others = ["Why might someone have drawn the red circle?"]
    text = '{"question": "Why might someone have drawn this red circle?", "answer": "To show a shape."}'
    assert "similar_question" in check("qa", text, others)
    assert V.rouge_l("a b c d", "a b c d") == 1.0 and V.rouge_l("a b", "c d") == 0.0


def test_llava_conversations_put_the_image_token_once_first():
    convs = V.conversations([V.Turn("What is it?", "A circle."), V.Turn("Colour?", "Red.")])
    assert convs[0] == {"from": "human", "value": "<image>\nWhat is it?"}
    assert [c["from"] for c in convs] == ["human", "gpt", "human", "gpt"]
    assert V.llava_format_ok(convs) is None
    assert V.llava_format_ok(convs[1:]) is not None
