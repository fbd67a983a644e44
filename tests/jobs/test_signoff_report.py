"""The report an auditor signs off: every model named, bars drawn to scale, stages in pipeline order,
clean numbers, and evidence of what the privacy stage did (NSFW images only when asked)."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmcurate.engine.rundir import RunDir
from mmcurate.jobs.report import write_report

pytestmark = pytest.mark.slow
FLOAT_NOISE = re.compile(r"\d\.\d*(?:9{4,}|0{4,})[1-9]")  # 0.699999988079071, 0.30000000000000004


def _leaves(entry: dict, key: str = "") -> list[tuple[str, object]]:
    if isinstance(entry, dict):
        return [leaf for k, v in entry.items() for leaf in _leaves(v, k)]
    return [(key, entry)]


def _image(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")


def test_privacy_evidence_shows_faces_and_captions_before_and_after(demo_run, tmp_path):
    run_dir, _ = demo_run
    report = json.loads((run_dir / "report" / "report.json").read_text())
    ledger = {r["row"]: r for r in pq.read_table(run_dir / "ledger.parquet").to_pylist()}
    evidence = report["privacy_evidence"]
    blurred = [r for r in ledger.values() if r["status"] == "kept" and r["scores"]["face_action"] == "blurred"]
    redacted = [r for r in ledger.values() if r["status"] == "kept" and r["scores"]["pii_action"] == "redacted"]
    assert len(evidence["faces"]) == min(4, len(blurred)) > 0 and len(evidence["pii"]) == min(4, len(redacted)) > 0
    page = (run_dir / "report" / "index.html").read_text()
    section = page.split("<h2>Privacy evidence</h2>")[1].split("<h2>")[0]
    download = pq.read_table(sorted((run_dir / "stages" / "download").glob("*.parquet")),
                             columns=["row", "image"]).to_pylist()
    stored = {r["row"]: Image.open(io.BytesIO(r["image"])) for r in download if r["image"]}
    shots = re.findall(r'<img class="thumb" src="(data:image/jpeg;base64,[^"]+)"', section)
    assert len(shots) == 2 * len(evidence["faces"])
    for item, (before, after) in zip(evidence["faces"], zip(shots[::2], shots[1::2])):
        row = ledger[item["row"]]
        assert (item["uid"], item["boxes"], item["faces"]) == (row["uid"], row["scores"]["face_boxes"],
                                                               row["scores"]["faces"])
        assert item["uid"][:12] in section
        # the boxes are in the stored (downloaded) image's pixels: drawn in red where the face was
        image, shown = stored[item["row"]], _image(before)
        x1, y1, x2, y2 = item["boxes"][0]
        assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height
        scale = shown.width / image.width
        edge = np.asarray(shown, np.int32)[round(y1 * scale) - 2:round(y1 * scale) + 3,
                                           round((x1 + x2) / 2 * scale) - 2:round((x1 + x2) / 2 * scale) + 3]
        assert (edge[..., 0] - edge[..., 1:].max(-1)).max() > 80, "no red box edge where the face was"
        # and blurred there as exported
        plain = np.asarray(image.convert("RGB").resize(shown.size), float)
        change = np.abs(np.asarray(_image(after), float) - plain).mean(-1)
        face = change[round(y1 * scale):round(y2 * scale), round(x1 * scale):round(x2 * scale)]
        assert face.mean() > 3 * change.mean()
    exported = {r["uid"]: r["caption"] for p in sorted((run_dir / "shards" / "parquet").glob("*.parquet"))
                for r in pq.read_table(p, columns=["uid", "caption"]).to_pylist()}
    for item in evidence["pii"]:
        row = ledger[item["row"]]
        assert item["before"] == row["caption"] and item["after"] == exported[row["uid"]] != row["caption"]
        assert item["pii_types"] == row["scores"]["pii_types"] and "[" in item["after"]
        assert html.escape(item["before"]) in section and html.escape(item["after"]) in section
    # the same choice every time the report is built
    copy = shutil.copytree(run_dir, tmp_path / "run")
    write_report(RunDir.at(copy))
    assert json.loads((copy / "report" / "report.json").read_text())["privacy_evidence"] == evidence


def test_nsfw_images_stay_hidden_unless_asked(demo_run, tmp_path):
    run_dir, _ = demo_run
    report = json.loads((run_dir / "report" / "report.json").read_text())
    nsfw = report["samples"]["nsfw_image"]
    assert nsfw

    def shown(page: str) -> str:
        return page.split(">nsfw_image</h3>")[1].split("<h3>")[0]

    hidden = shown((run_dir / "report" / "index.html").read_text())
    assert "<img" not in hidden and all(item["uid"] in hidden for item in nsfw)
    copy = shutil.copytree(run_dir, tmp_path / "run")
    asked = shown(write_report(RunDir.at(copy), show_nsfw=True).read_text())
    assert asked.count('<img class="thumb"') == len(nsfw) and "--show-nsfw" in asked


def test_report_is_complete_and_drawn_to_scale_in_chromium(demo_run, browser):
    run_dir, _ = demo_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    browser.get((run_dir / "report" / "index.html").as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    width, client = browser.execute_script(
        "const d = document.documentElement; return [d.scrollWidth, d.clientWidth]")
    assert width <= client, "the page scrolls sideways"
    # every bar's width is its value over the largest's, the same track in every chart
    charts = browser.execute_script(
        "return [...document.querySelectorAll('.bars')].map(b => [...b.querySelectorAll('.fill')]"
        ".map(f => [+f.dataset.value, f.getBoundingClientRect().width]))")
    assert len(charts) >= 2  # the funnel and the reasons
    full = max(w for chart in charts for _, w in chart)
    assert full > 200
    for chart in charts:
        top = max(v for v, _ in chart)
        assert all(abs(w - full * v / top) <= 2 for v, w in chart), chart
    # every model of the manifest, and every setting of it, on the page; sha256s whole in a title
    text = browser.execute_script("return document.body.innerText")
    leaves = _leaves(manifest["models"])
    assert {"centerface", "nudenet-320n", "profanity-check", "mmcurate-stand-in-teacher"} <= {v for _, v in leaves}
    for key, value in leaves:
        if key == "sha256" and value:
            assert value[:12] in text and browser.execute_script(
                f"return document.querySelectorAll('[title=\"{value}\"]').length")
        elif value is not None:
            assert str(value) in text, (key, value)
    # the Stages table in pipeline order
    stages = browser.execute_script(
        "const h = [...document.querySelectorAll('h2')].find(h => h.textContent === 'Stages');"
        "return [...h.nextElementSibling.querySelectorAll('tbody tr td:first-child')].map(td => td.textContent)")
    assert stages == [s for s in manifest["stage_order"] if s in manifest["stages"]]
    # numbers as people write them: no float32 noise, 4 significant digits in the stages' seconds
    everything = browser.execute_script("return document.body.textContent")
    assert not FLOAT_NOISE.findall(everything)
    timings = browser.execute_script(
        "const h = [...document.querySelectorAll('h2')].find(h => h.textContent === 'Stages');"
        "return [...h.nextElementSibling.querySelectorAll('tbody tr')].map(tr => tr.children[7].textContent)")
    assert any(timings) and all(len(re.sub(r"\D", "", t).lstrip("0")) <= 4 for t in timings)
    faces = browser.execute_script(
        "return [...document.querySelectorAll('.shot img.thumb')].map(i => i.complete && i.naturalWidth > 0)")
    assert faces and all(faces)


def test_duplicates_whose_keeper_a_later_stage_dropped_are_counted():
    import polars as pl

    from mmcurate.jobs.examples import orphaned_duplicates

    ledger = pl.LazyFrame({
        "uid": ["a", "b", "c", "d", "e"],
        "status": ["kept", "dropped", "dropped", "dropped", "dropped"],
        "reason": [None, "low_clip_score", "near_duplicate", "near_duplicate", "exact_duplicate"],
        "scores": [{"dup_of": None}, {"dup_of": None}, {"dup_of": "a"}, {"dup_of": "b"}, {"dup_of": "b"}],
    })
    assert orphaned_duplicates(ledger) == {"exact_duplicate": 1, "near_duplicate": 1}  # b's: dropped by CLIP later
