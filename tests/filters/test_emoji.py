"""The emoji-caption filter: its score, and its decisions in the quality stage and through `mmcurate run`."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from mmcurate.demo.server import ImageServer, Route
from mmcurate.filters.emoji import EMOJI_FRACTION, emoji_fraction
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.stages.quality import QualityStage
from tests.conftest import SAFETY_OFF, run_cli

FRACTIONS = {
    "a red bus at the station": 0.0,
    "I \u2764 NY": 0.25,  # I, heart, N, Y
    "\U0001F60D\U0001F60D\U0001F60D\U0001F525\U0001F525 wow": 5 / 8,
    "\U0001F468\u200D\U0001F469\u200D\U0001F467": 1.0,  # a family: three people, two joiners
    "\U0001F1EB\U0001F1F7 \u2B50\uFE0F": 1.0,  # a flag (two regional indicators) and a star
    "\u00A9 2021 Getty Images \u2122": 0.0,
    " ": 0.0,
}


def test_the_share_of_emoji_among_visible_characters():
    for caption, want in FRACTIONS.items():
        assert emoji_fraction(caption) == pytest.approx(want), caption


def test_the_quality_stage_drops_mostly_emoji_captions_and_scores_every_row():
    captions = list(FRACTIONS)
    rows = pa.table({
        C.UID: [f"u{i}" for i in range(len(captions))], C.ROW: list(range(len(captions))),
        C.URL: ["http://x.test/a.jpg"] * len(captions), C.CAPTION: captions,
        C.ORIGINAL_WIDTH: pa.array([300] * len(captions), pa.int32()),
        C.ORIGINAL_HEIGHT: pa.array([300] * len(captions), pa.int32()),
    })
    stage = QualityStage(config_from_dict({"input": {"path": "x"}, "quality": {"emoji": {"enabled": True}}}))
    out = stage.process(rows)
    assert out[C.REASON].to_pylist() == [None, None, "emoji_caption", "emoji_caption", "emoji_caption", None, None]
    assert out[C.DETAIL][2].as_py() == "62% of the caption's characters are emoji (max 50%)"
    assert out[EMOJI_FRACTION].to_pylist()[:2] == [0.0, 0.25]
    assert EMOJI_FRACTION in stage.score_columns and "emoji_caption" in {t.reason for t in stage.thresholds}
    assert stage.settings == ("quality.emoji",)
    # off by default: the quality stage does not run for it, nor gains a column when it runs for others
    assert not QualityStage.enabled(config_from_dict({"input": {"path": "x"}}))
    text_only = QualityStage(config_from_dict({"input": {"path": "x"}, "quality": {"text": {"enabled": True}}}))
    assert EMOJI_FRACTION not in text_only.output_schema.names


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (seed * 60 % 256, 90, 160)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_through_run_the_ledger_report_audit_and_export_know_the_filter(tmp_path, tripwire):
    captions = ["a blue square on a wall", "\U0001F60D\U0001F60D\U0001F525\U0001F525\U0001F525 wow", "a green field"]
    routes = {f"/{i}.png": Route(_png(i), content_type="image/png") for i in range(len(captions))}
    with ImageServer(routes) as server:
        lines = [{"url": server.url(f"/{i}.png"), "caption": c} for i, c in enumerate(captions)]
        (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        config = {"input": {"path": str(tmp_path / "in.jsonl")},
                  "download": {"allow_networks": ["127.0.0.1/32"], "retries": 0, "image_size": 32},
                  "dedup": {"exact": False, "phash": {"enabled": False}}, "clip": {"enabled": False},
                  "quality": {"emoji": {"enabled": True}}, "export": {"formats": ["parquet"]}, **SAFETY_OFF}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        run = tmp_path / "run"
        proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(run), "--quiet")
        assert proc.returncode == 0, proc.stderr
    ledger = pq.read_table(run / "ledger.parquet").to_pylist()
    emoji = ledger[1]
    assert (emoji["status"], emoji["stage"], emoji["reason"]) == ("dropped", "quality", "emoji_caption")
    assert emoji["scores"][EMOJI_FRACTION] == pytest.approx(5 / 8) and ledger[0]["scores"][EMOJI_FRACTION] == 0
    report = json.loads((run / "report" / "report.json").read_text())
    drawn = {h["score"]: h for h in report["histograms"]}
    assert drawn[EMOJI_FRACTION]["threshold"] == 0.5 and drawn[EMOJI_FRACTION]["rows"] == 3
    explained = json.loads(run_cli("audit", str(run), "--explain", emoji["uid"], "--format", "json").stdout)
    quality = next(s for s in explained[0]["steps"] if s["stage"] == "quality")
    assert quality["settings"]["quality.emoji"] == {"enabled": True, "max_fraction": 0.5}
    # a score threshold: a looser cut takes the row back without a rerun
    proc = run_cli("export", str(run), "--format", "parquet", "--out", str(tmp_path / "all"),
                   "--where", f"{EMOJI_FRACTION} <= 1")
    assert proc.returncode == 0, proc.stderr
    rows = [r for p in sorted((tmp_path / "all").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert [r["row"] for r in rows] == [0, 1, 2]
