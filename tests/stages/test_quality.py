"""Quality filtering through `mmcurate run`, and the DataComp recipes that ship with mmcurate."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

import mmcurate
from mmcurate.demo.server import ImageServer, Route
from mmcurate.schemas.config import load_config
from tests.conftest import SAFETY_OFF_SET, run_cli

RECIPES = sorted((Path(mmcurate.__file__).parent / "recipes").glob("*.yaml"))


def png(w: int, h: int, seed: int) -> bytes:
    img = Image.new("RGB", (w, h), (seed * 40 % 256, 120, 200))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# path, (width, height), caption, expected reason
ROWS = [
    ("/a.png", (320, 240), "a yellow bus parked in front of the old station", None),
    ("/b.png", (320, 240), "two children building a sandcastle on the beach", None),
    ("/c.png", (320, 240), "red car", "caption_too_short"),
    ("/d.png", (320, 240), "un chien qui attrape un frisbee dans le parc", "wrong_language"),
    ("/e.png", (320, 240), "ein Hund fängt einen Frisbee im Park", "wrong_language"),
    ("/f.png", (150, 400), "a tall narrow window of a church tower", "image_too_small"),
    ("/g.png", (900, 250), "a panorama of the mountains at dawn", "extreme_aspect_ratio"),
    ("/h.png", (320, 240), "IMG_20190714_134502.jpg", "filename_caption"),
    ("/i.png", (320, 240), "https://cdn.example.com/photos/1234.jpg", "url_caption"),
    ("/j.png", (320, 240), "untitled", "generic_caption"),
]


def test_recipes_validate():
    assert {p.name for p in RECIPES} == {"datacomp_basic.yaml", "datacomp_clip_score.yaml",
                                        "datacomp_image_based.yaml", "datacomp_image_based_clip.yaml"}
    for path in RECIPES:
        cfg = load_config(path, ["input.path=my_pool.parquet"])
        assert cfg.input.path == "my_pool.parquet"
    clip30 = load_config(RECIPES[1])
    assert clip30.clip.min_percentile == 70 and clip30.clip.min_score is None and clip30.clip.model == "ViT-L-14"


@pytest.mark.slow
def test_basic_recipe_and_caption_text_through_run(tmp_path, tripwire):
    routes = {path: Route(png(w, h, i), content_type="image/png") for i, (path, (w, h), _, _) in enumerate(ROWS)}
    with ImageServer(routes) as server:
        lines = [{"url": server.url(path), "caption": cap} for path, _, cap, _ in ROWS]
        (tmp_path / "pool.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        recipe = next(p for p in RECIPES if p.name == "datacomp_basic.yaml")
        proc = run_cli("run", str(recipe), "--run-dir", str(tmp_path / "run"), "--quiet",
                       "--set", f"input.path={tmp_path / 'pool.jsonl'}",
                       "--set", "download.allow_networks=[127.0.0.1/32]", "--set", "download.image_size=64",
                       "--set", "quality.text.enabled=true", *SAFETY_OFF_SET)
        assert proc.returncode == 0, proc.stderr
    ledger = {r["url"]: r for r in pq.read_table(tmp_path / "run" / "ledger.parquet").to_pylist()}
    for path, _, cap, expected in ROWS:
        row = ledger[server.url(path)]
        assert row["reason"] == expected, (cap, row["reason"], row["detail"])
        assert row["stage"] == (None if expected is None else "quality")
        assert row["scores"]["caption_words"] >= 1
    assert ledger[server.url("/d.png")]["scores"]["language"] == "fr"
    assert ledger[server.url("/a.png")]["scores"]["language"] == "en"
    assert ledger[server.url("/a.png")]["scores"]["language_confidence"] > 0
    # sizes are the originals: the stored images were resized to 64 px
    assert "150x400" in ledger[server.url("/f.png")]["detail"]
