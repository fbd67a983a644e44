"""Stage fingerprints decide what a rerun redoes: upgrading mmcurate must not change them.

The expected values are what mmcurate computed before stages were made of filters; a change here
means every existing run dir with that config would redo the stage and everything after it.
Adding a filter (off by default) must leave them all as they are.
"""

from __future__ import annotations

import pytest

from mmcurate.schemas.config import config_from_dict
from mmcurate.stages import build_stages

CONFIGS = {
    "default": {},
    "quality": {"quality": {"basic": {"enabled": True}, "text": {"enabled": True}}, "dedup": {"semantic": {"enabled": True}}},
    "partial": {"quality": {"text": {"enabled": True}}, "safety": {"nsfw": {"enabled": False}},
                "privacy": {"pii": {"enabled": False}, "faces": {"action": "drop"}}, "clip": {"min_percentile": 30}},
    "synthesis": {"clip": {"enabled": False}, "synthesis": {"enabled": True}, "dedup": {"phash": {"max_distance": 4}}},
}
EXPECTED = {
    "default": {"download": "5b0067ef78fe6ee3", "features": "39d9f0b200e01d03", "dedup": "a153ff4a7ea4baa8",
                "clip_embed": "f50b3ba6ed70198b", "clip": "eea7443e89a85530", "safety": "f1293beaab5c6faa",
                "privacy": "cfea86f5deedcfe4"},
    "quality": {"download": "5b0067ef78fe6ee3", "quality": "f0b59e67817a31ad", "features": "dd07329143e37ebd",
                "dedup": "147773ccaea83571", "clip_embed": "1d174a22571660c9", "clip": "8c264c398e464d12",
                "semantic_dedup": "83f450a1fd07d966", "safety": "8d9330b2e8ff3a80", "privacy": "d06c8cb930b42930"},
    "partial": {"download": "5b0067ef78fe6ee3", "quality": "2c1c37f32971df3d", "features": "e496c398ba7591a4",
                "dedup": "93a766ad3cb1b67c", "clip_embed": "0ffd41043a268bfd", "clip": "6a7e7bf5b48efdca",
                "safety": "2f30757f63d2bd52", "privacy": "500ad2987f2fe516"},
    "synthesis": {"download": "5b0067ef78fe6ee3", "features": "39d9f0b200e01d03", "dedup": "3ce25c4bbd9b7572",
                  "safety": "81edf35759cbaf63", "privacy": "ea2b193f94b78161", "synthesis": "6e2a131e56d0c381"},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fingerprints_are_those_of_earlier_versions(name):
    chain, got = "0123456789abcdef", {}
    for stage in build_stages(config_from_dict({"input": {"path": "x"}, **CONFIGS[name]})):
        if stage.name == "synthesis":
            stage.prepare()  # its templates are part of what its answers depend on
        chain = stage.fingerprint(chain)
        got[stage.name] = chain
    assert got == EXPECTED[name]



def test_connect_to_counts_only_when_set_and_never_its_loopback_port():
    def download(connect_to):
        config = config_from_dict({"input": {"path": "x"}, "download": {"connect_to": connect_to}})
        return build_stages(config)[0].fingerprint("0123456789abcdef")

    assert download([]) == EXPECTED["default"]["download"]
    routed = download(["images.example:80:127.0.0.1:8001"])
    assert routed != download([]) and routed == download(["images.example:80:127.0.0.1:9002"])


# the columns each filter-made stage wrote before stages were made of filters (identity and decision first)
COLUMNS = {
    "quality": [("caption_words", "int32"), ("caption_chars", "int32"), ("caption_digit_fraction", "float"),
                ("caption_alpha_fraction", "float"), ("caption_top_word_fraction", "float"), ("language", "string"),
                ("language_confidence", "float")],
    "clip_heads": [("aesthetic_score", "float"), ("watermark_score", "float")],
    "safety": [("toxicity", "float"), ("toxicity_class", "string"), ("toxicity_model", "string"), ("nsfw", "float"),
               ("nsfw_class", "string")],
    "privacy": [("faces", "int16"), ("face_boxes", "list<item: list<item: int32>>"), ("face_action", "string"),
                ("pii_types", "list<item: string>"), ("pii_action", "string"), ("caption", "string"),
                ("image", "binary"), ("image_format", "string")],
}


@pytest.mark.parametrize("partial", [False, True])
def test_filter_stages_write_the_columns_of_earlier_versions(partial):
    """With every filter on, and with only one filter per stage on (the others' columns stay, as null)."""
    quality = {"text": {"enabled": True}} if partial else {"text": {"enabled": True}, "basic": {"enabled": True}}
    quality["watermark"] = {"enabled": True, "weights": "w.pth"}
    if not partial:
        quality["aesthetic"] = {"enabled": True, "weights": "a.pth"}
    config = config_from_dict({"input": {"path": "x"}, "quality": quality,
                               **({"safety": {"nsfw": {"enabled": False}}, "privacy": {"faces": {"enabled": False}}}
                                  if partial else {})})
    stages = {s.name: s for s in build_stages(config)}
    for name, columns in COLUMNS.items():
        schema = stages[name].output_schema
        assert schema.names[:5] == ["uid", "row", "status", "reason", "detail"], name
        assert [(f.name, str(f.type)) for f in schema][5:] == columns, name
