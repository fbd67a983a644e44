"""The synthesis stage in-process (no Ray): structured output, the judge, user templates."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmcurate.demo import shapes
from mmcurate.engine.rundir import RunDir
from mmcurate.engine.runner import process_shard
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.schemas.errors import ConfigError
from mmcurate.stages.synthesis.stage import SynthesisStage
from mmcurate.stages.synthesis.templates import load_templates
from tests.teacher_double import FaultyTeacher


class JudgingTeacher(FaultyTeacher):
    """Records every payload; its judge calls answers about "[wrong]" samples (the answer names them) inaccurate."""

    def __init__(self):
        super().__init__()
        self.payloads = []

    def content(self, payload):
        self.payloads.append(payload)
        if self.task_of(payload) == "judge" and "wrong" in self.request_text(payload):
            return json.dumps({"accurate": False, "complete": True})
        return super().content(payload)


def rows(captions):
    pairs = shapes.pairs(len(captions), seed=3, size=64)
    return pa.table({
        C.UID: [f"u{i}" for i in range(len(captions))], C.ROW: list(range(len(captions))),
        C.URL: [f"http://x/{i}" for i in range(len(captions))], C.CAPTION: captions,
        C.IMAGE: [shapes.png(p.image) for p in pairs], C.IMAGE_FORMAT: ["png"] * len(captions),
    })


def stage_for(teacher, tmp_path, **synthesis):
    config = config_from_dict({"input": {"path": "x"}, "clip": {"enabled": False}, "synthesis": {
        "enabled": True, "endpoint": teacher.endpoint, "tasks": ["reasoning"], **synthesis}})
    stage = SynthesisStage(config)
    stage.prepare()
    return stage


def process(stage, tmp_path, table):
    """The stage over shard 0 of a run dir at `tmp_path`, stored as a run stores it; its output."""
    process_shard(RunDir(tmp_path), stage, 0, table)
    return RunDir(tmp_path).read_shard(stage.name, 0)


def test_structured_output_and_the_judge(tmp_path, tripwire):
    with JudgingTeacher() as teacher:
        stage = stage_for(teacher, tmp_path, structured_output=True, judge={"enabled": True})
        out = process(stage, tmp_path, rows(["a red circle", "a blue square [wrong]"]))
    asked = [p for p in teacher.payloads if teacher.task_of(p) == "reasoning"]
    assert asked and all(p["response_format"]["type"] == "json_schema" for p in asked)
    assert asked[0]["response_format"]["json_schema"]["schema"]["required"] == ["question", "answer"]
    image_part = asked[0]["messages"][-1]["content"][1]
    assert image_part["type"] == "image_url" and image_part["image_url"]["url"].startswith("data:image/png;base64,")
    records = pq.read_table(tmp_path / "stages" / "synthesis" / "records-000000.parquet").to_pylist()
    verdicts = {r[C.UID]: (r[C.STATUS], r[C.REASON], json.loads(r["judge"])) for r in records}
    assert verdicts["u0"] == ("ok", None, {"accurate": True, "complete": True})
    assert verdicts["u1"][:2] == ("rejected", "judge_inaccurate")
    assert out[C.STATUS].to_pylist() == ["kept", "kept"]  # instructions never decide a sample's fate
    assert out[C.SYNTH_ANSWERED].to_pylist() == [1, 1] and out[C.SYNTH_FAILED].to_pylist() == [0, 0]


def test_user_templates_add_tasks_and_bad_ones_name_the_key(tmp_path):
    (tmp_path / "count.yaml").write_text(
        "id: count\nversion: 3\nshape: qa\nsystem: Count things.\n"
        "prompt: 'Note: {caption}. Respond with a JSON object {{\"question\": \"...\", \"answer\": \"...\"}}.'\n")
    templates = load_templates(str(tmp_path), ["count", "detail"])
    assert templates["count"].version == "3" and templates["detail"].shape == "text"  # built-in fallback
    (tmp_path / "broken.yaml").write_text("id: broken\nshape: poem\nprompt: x\nversion: 1\n")
    with pytest.raises(ConfigError, match="synthesis.templates"):
        load_templates(str(tmp_path), ["broken"])
    with pytest.raises(ConfigError, match="synthesis.tasks"):
        load_templates(str(tmp_path), ["nonexistent"])


def test_missing_api_key_variable_exits_2_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_TEACHER_KEY", raising=False)
    config = config_from_dict({"input": {"path": "x"}, "clip": {"enabled": False},
                               "synthesis": {"enabled": True, "api_key_env": "NO_SUCH_TEACHER_KEY"}})
    with pytest.raises(ConfigError, match="synthesis.api_key_env"):
        SynthesisStage(config).prepare()
    with pytest.raises(ConfigError, match="synthesis.endpoint"):
        config_from_dict({"input": {"path": "x"}, "synthesis": {"endpoint": "http://user:key@host/v1"}})


def test_cache_survives_a_line_cut_short_by_a_crash(tmp_path, tripwire):
    with JudgingTeacher() as teacher:
        stage = stage_for(teacher, tmp_path)
        process(stage, tmp_path, rows(["a red circle", "a blue square"]))
        asked = teacher.requests
        cache = RunDir(tmp_path).cache_file(stage.name, 0)
        whole = cache.read_bytes()
        cache.write_bytes(whole[:-20])  # the last answer's line torn, as a kill mid-write leaves it
        process(stage, tmp_path, rows(["a red circle", "a blue square"]))
        assert teacher.requests == asked + 1  # only the torn answer is asked again
        assert len(cache.read_bytes().splitlines()) == 2 and cache.read_bytes().endswith(b"\n")
