"""MMC4's image-text assignment in a documents run: the stand-in CLIP's stored image embeddings
against each document's sentences, one text per image; each picture goes to the sentence naming
its shape (whatever the input's matched_text_index said), and a picture no sentence names leaves
its document (low_text_similarity). The mmc4 export records the match and its similarity."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from mmcurate.demo import shapes
from mmcurate.demo.server import ImageServer, Route
from mmcurate.schemas import columns as C
from tests.conftest import SAFETY_OFF, run_cli

pytestmark = pytest.mark.slow

FILLER = "the page goes on about the pictures for a few more words here"
PICTURES = [("red", "circle"), ("blue", "square"), ("yellow", "triangle"), ("green", "cross")]


@pytest.fixture(scope="module")
def assigned(shapes_clip, tmp_path_factory):
    model_dir, card = shapes_clip
    tmp = tmp_path_factory.mktemp("assignment")
    rng = np.random.default_rng(7)
    routes = {f"/{s}.png": Route(shapes.png(shapes.draw(c, s, rng)), content_type="image/png") for c, s in PICTURES}
    with ImageServer(routes) as server:
        def info(shape: str) -> dict:  # the input pairs every image with the first sentence
            return {"image_name": f"{shape}.png", "raw_url": server.url(f"/{shape}.png"), "matched_text_index": 0}
        docs = [  # sentences in another order than the images
            {"url": "https://s.example/0", "image_info": [info("circle"), info("square"), info("triangle")],
             "text_list": [FILLER, "a photo of a yellow triangle", "a red circle", "a drawing of a blue square"]},
            {"url": "https://s.example/1", "image_info": [info("cross"), info("circle")],  # no sentence names the cross
             "text_list": ["a red circle on a plain background", FILLER]},
        ]
        (tmp / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        config = {"input": {"path": str(tmp / "docs.jsonl"), "format": "mmc4"},
                  "download": {"allow_networks": ["127.0.0.1/32"], "retries": 0, "image_size": 64},
                  "dedup": {"exact": False, "phash": {"enabled": False}},
                  "clip": {"model": f"local-dir:{model_dir}", "min_score": None, "batch_size": 32}, **SAFETY_OFF,
                  "documents": {"assignment": {"enabled": True, "min_similarity": card["threshold"]}},
                  "export": {"formats": ["parquet"]}}
        (tmp / "c.yaml").write_text(yaml.safe_dump(config))
        proc = run_cli("run", str(tmp / "c.yaml"), "--run-dir", str(tmp / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run_cli("export", str(tmp / "run"), "--format", "mmc4", "--out", str(tmp / "mmc4"))
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp, card


def test_each_image_goes_to_the_sentence_naming_its_shape(assigned):
    tmp, card = assigned
    docs = pq.read_table(tmp / "run" / "documents.parquet").to_pylist()
    assert [(d[C.STATUS], d[C.IMAGES_KEPT]) for d in docs] == [(C.KEPT, 3), (C.KEPT, 1)]
    assert docs[1][C.DETAIL] == "1 of 2 images removed (1 low_text_similarity)"
    lines = [json.loads(line) for line in (tmp / "mmc4" / "000000.jsonl").read_text().splitlines()]
    first = {shape_of(i["raw_url"]): (i["matched_text_index"], i["matched_sim"]) for i in lines[0]["image_info"]}
    assert {k: v[0] for k, v in first.items()} == {"circle": 2, "square": 3, "triangle": 1}
    assert all(sim >= card["threshold"] for _, sim in first.values())
    # the cross has no sentence: it left the document; the circle took its own, not the input's pairing
    assert [(shape_of(i["raw_url"]), i["matched_text_index"]) for i in lines[1]["image_info"]] == [("circle", 0)]


def test_the_assignment_needs_clip(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "input": {"path": str(tmp_path / "d.jsonl"), "format": "mmc4"}, "clip": {"enabled": False}, **SAFETY_OFF,
        "documents": {"assignment": {"enabled": True}}}))
    (tmp_path / "d.jsonl").write_text(json.dumps({"text_list": ["a"], "image_info": []}) + "\n")
    proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 2 and "documents.assignment.enabled" in proc.stderr


def shape_of(url: str) -> str:
    return url.rsplit("/", 1)[-1].removesuffix(".png")
