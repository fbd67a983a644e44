"""Synthesis through `mmcurate run` against a loopback teacher double with injected faults."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest
import yaml

from mmcurate.demo import shapes
from mmcurate.demo.server import ImageServer, Route
from mmcurate.jobs.instructions import SCHEMA_PATH
from mmcurate.stages.synthesis.templates import BUILTIN_TEMPLATES
from tests.conftest import SAFETY_OFF, run_cli
from tests.teacher_double import RETRY_AFTER_S, FaultyTeacher

pytestmark = pytest.mark.slow

KEY = "sk-test-0123456789abcdef-do-not-leak"
MARKERS = ["[429]", "[503]", "[500]", "[slow]", "[malformed]", "[empty]", "[length]", "[refuse]", "[400]",
           "[echo]", "[caption]", "[loop]"]
TASKS = ["conversation", "detail", "reasoning"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory, shapes_clip):
    tmp = tmp_path_factory.mktemp("synth")
    model_dir, card = shapes_clip
    pairs, seen = [], set()
    for p in shapes.pairs(80, seed=5, size=96):
        if p.caption not in seen:  # distinct captions: the stand-in's questions come from them
            seen.add(p.caption)
            pairs.append(p)
    pairs = pairs[:6 + len(MARKERS)]
    routes = {f"/s/{i}.png": Route(shapes.png(p.image), content_type="image/png") for i, p in enumerate(pairs)}
    captions = [p.caption for p in pairs[:6]] + [f"{p.caption} {m}" for p, m in zip(pairs[6:], MARKERS)]
    with ImageServer(routes) as images, FaultyTeacher() as teacher:
        lines = [{"url": images.url(f"/s/{i}.png"), "caption": c} for i, c in enumerate(captions)]
        (tmp / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        config = {
            "input": {"path": str(tmp / "in.jsonl"), "shard_size": 7},
            "download": {"allow_networks": ["127.0.0.1/32"], "retries": 0, "image_size": 64},
            "dedup": {"exact": False, "phash": {"enabled": False}},
            "clip": {"model": f"local-dir:{model_dir}", "min_score": None, "batch_size": 32},
            **SAFETY_OFF,
            "synthesis": {"enabled": True, "endpoint": teacher.endpoint, "model": "teacher-x", "api_key_env": "TEACHER_KEY",
                          "timeout_s": 1, "max_retries": 3, "max_concurrency": 8, "min_answer_chars": 2},
            "export": {"formats": ["parquet", "llava"]},
        }
        (tmp / "c.yaml").write_text(yaml.safe_dump(config))
        # Ray's own session (logs of every worker and actor, the teacher client's included) goes to a
        # folder of this test's; short, since Ray's socket paths must fit in 107 bytes
        ray_tmp = Path(tempfile.mkdtemp(prefix="mmr-", dir="/tmp"))
        env = {"TEACHER_KEY": KEY, "RAY_TMPDIR": str(ray_tmp)}
        first = run_cli("-v", "run", str(tmp / "c.yaml"), "--run-dir", str(tmp / "run"), env=env)
        assert first.returncode == 0, first.stderr
        yield {"tmp": tmp, "teacher": teacher, "env": env, "logs": first.stdout + first.stderr, "captions": captions,
               "ray_tmp": ray_tmp}
    shutil.rmtree(ray_tmp, ignore_errors=True)


def records(run_dir):
    return [r for f in sorted((run_dir / "instructions").glob("0*.parquet")) for r in pq.read_table(f).to_pylist()]


def by_marker(synth, recs):
    out = {}
    uid_caption = {r["uid"]: r["caption"] for r in pq.read_table(synth["tmp"] / "run" / "ledger.parquet").to_pylist()}
    for r in recs:
        caption = uid_caption[r["uid"]]
        marker = next((m for m in MARKERS if m in caption), "ok")
        out.setdefault(marker, []).append(r)
    return out


def test_every_kept_sample_ends_with_a_record_per_task(synth):
    run_dir = synth["tmp"] / "run"
    ledger = pq.read_table(run_dir / "ledger.parquet").to_pylist()
    kept = {r["uid"] for r in ledger if r["status"] == "kept"}
    recs = records(run_dir)
    assert len(kept) == len(synth["captions"])
    assert sorted((r["uid"], r["task"]) for r in recs) == sorted((u, t) for u in kept for t in TASKS)
    assert all(r["status"] in ("ok", "rejected", "failed") and (r["status"] == "ok") == (r["reason"] is None)
               for r in recs)
    marked = by_marker(synth, recs)
    assert all(r["status"] == "ok" for r in marked["ok"]), [(r["task"], r["problems"]) for r in marked["ok"]]
    for marker in ("[429]", "[503]", "[500]", "[slow]", "[malformed]"):  # transient: retried, then answered
        assert all(r["status"] == "ok" and r["retries"] >= 1 for r in marked[marker]), marker
    assert {(r["status"], r["reason"], r["attempts"]) for r in marked["[400]"]} == {("failed", "http_400", 1)}
    expected = {"[empty]": "empty_answer", "[length]": "truncated", "[refuse]": "refusal",
                "[echo]": "prompt_echo", "[caption]": "mentions_caption", "[loop]": "repetition"}
    for marker, reason in expected.items():
        assert {r["reason"] for r in marked[marker]} == {reason}, (marker, [(r["task"], r["problems"]) for r in marked[marker]])
    # provenance on every record; the endpoint without any key
    ok = marked["ok"][0]
    assert ok["teacher_model"] == "teacher-x" and ok["template_id"] == ok["task"] and ok["template_version"] == "1"
    assert len(ok["request_hash"]) == 64 and json.loads(ok["sampling"])["temperature"] == 0.2
    assert ok["prompt_tokens"] > 0 and ok["completion_tokens"] > 0 and ok["latency_s"] > 0
    assert ok["answer_clip_score"] is not None and ok["caption_clip_score"] is not None
    ledger_row = next(r for r in ledger if r["uid"] == marked["[400]"][0]["uid"])
    assert ledger_row["scores"]["synthesis_failed"] == 3 and "http_400" in ledger_row["detail"]


def test_retries_honour_retry_after(synth):
    log = synth["teacher"].log
    for marker in ("[429]", "[503]"):
        for task in TASKS:
            times = [e["time"] for e in log if marker in e["key"][0] and e["key"][1] == task]
            assert len(times) >= 2 and times[1] - times[0] >= RETRY_AFTER_S - 0.05, (marker, task, times)


def test_llava_json_validates_and_export_writes_images(synth, tmp_path):
    run_dir = synth["tmp"] / "run"
    data = json.loads((run_dir / "instructions" / "llava.json").read_text())
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.validate(data, schema)
    ok = [r for r in records(run_dir) if r["status"] == "ok"]
    assert len(data) == len(ok) > 0
    for item in data:
        convs = item["conversations"]
        assert [c["from"] for c in convs] == ["human", "gpt"] * (len(convs) // 2)
        assert sum(c["value"].count("<image>") for c in convs) == 1 and convs[0]["value"].startswith("<image>\n")
        assert (run_dir / "instructions" / item["image"]).is_file()
    proc = run_cli("export", str(run_dir), "--format", "llava", "--out", str(tmp_path / "llava"))
    assert proc.returncode == 0, proc.stderr
    exported = json.loads((tmp_path / "llava" / "llava.json").read_text())
    assert exported == data and all((tmp_path / "llava" / item["image"]).is_file() for item in exported)
    report = json.loads((run_dir / "report" / "report.json").read_text())["synthesis"]
    assert report["records"] == len(records(run_dir)) and report["failed_by_reason"] == {"http_400": 3}
    assert report["retries"] >= 15 and report["tokens_out"] > 0 and set(report["by_task"]) == set(TASKS)


def test_the_api_key_is_never_written_or_logged(synth):
    assert f"Bearer {KEY}" in synth["teacher"].authorization_seen  # it was used ...
    assert KEY not in synth["logs"]  # ... but never logged (the command's output at -v, workers' forwarded logs too)
    searched = 0
    # every file of the run dir, and every file Ray wrote for the run (its session: worker, actor and
    # raylet logs, what an operator collects from a cluster)
    for root in (synth["tmp"] / "run", synth["ray_tmp"]):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert KEY.encode() not in path.read_bytes(), path
                searched += 1
    ray_logs = list(synth["ray_tmp"].rglob("session_*/logs/*"))
    assert searched > 20 and any("worker" in p.name for p in ray_logs), "Ray's session logs were not found"


def test_rerun_makes_zero_requests_and_a_new_template_version_only_its_own(synth):
    tmp, teacher = synth["tmp"], synth["teacher"]
    before = teacher.requests
    proc = run_cli("run", str(tmp / "c.yaml"), "--run-dir", str(tmp / "run"), "--quiet", env=synth["env"])
    assert proc.returncode == 0, proc.stderr
    # a finished run asks again only what failed (failures are never cached): the [400] row's three
    again = teacher.log[before:]
    assert len(again) == 3 and all("[400]" in e["key"][0] for e in again), again
    assert "note:    synthesis: 3 of" in proc.stdout and "teacher requests failed (3 http_400)" in proc.stdout
    before = teacher.requests
    # a new version of one template: its requests are new, every other answer comes from the cache
    templates = tmp / "templates"
    shutil.copytree(BUILTIN_TEMPLATES, templates)
    detail = yaml.safe_load((templates / "detail.yaml").read_text())
    (templates / "detail.yaml").write_text(yaml.safe_dump({**detail, "version": 2}))
    proc = run_cli("run", str(tmp / "c.yaml"), "--run-dir", str(tmp / "run"), "--quiet", "--force",
                   "--set", f"synthesis.templates={templates}", env=synth["env"])
    assert proc.returncode == 0, proc.stderr
    new = teacher.log[before:]
    # failures are not cached (the [400] row is asked again); every other answer of another task is
    assert new and {e["key"][1] for e in new if "[400]" not in e["key"][0]} == {"detail"}
    recs = records(tmp / "run")
    assert {r["template_version"] for r in recs if r["task"] == "detail"} == {"2"}
    assert all(r["cached"] for r in recs if r["task"] != "detail" and r["status"] != "failed")


def test_the_across_run_checks_in_partitions_equal_one_pass(synth, tmp_path, monkeypatch):
    import pyarrow as pa

    from mmcurate.algos.parallel import SerialTasks
    from mmcurate.engine.rundir import RunDir
    from mmcurate.jobs import instructions
    from mmcurate.schemas.config import load_config
    from mmcurate.stages import build_stages
    from mmcurate.stages.synthesis.records import question_keys
    from tests.stages.synthesis.test_across_run import one_pass

    run_dir = RunDir(tmp_path / "run")
    shutil.copytree(synth["tmp"] / "run", run_dir.root)
    stages = build_stages(load_config(synth["tmp"] / "c.yaml"))
    synthesis = next(s for s in stages if s.name == "synthesis")
    monkeypatch.setenv("TEACHER_KEY", KEY)
    monkeypatch.setattr(instructions, "QUESTION_CAP_FLOOR", 2)  # 18 input rows: a cap of 2
    synthesis.prepare()  # its templates: which tasks ask the template's own words
    fixed = {t for t, x in synthesis.templates.items() if x.shape == "text"}
    shards = run_dir.shard_count()
    tables = [pq.read_table(run_dir.synthesis_records(s)) if run_dir.synthesis_records(s).exists() else None
              for s in range(shards)]
    rows = [t.to_pylist() if t is not None else [] for t in tables]
    asked = [(s, i) for s in range(shards) for i, r in enumerate(rows[s]) if question_keys(r, fixed)[0]]
    assert len(asked) >= 6 and len({s for s, _ in asked}) >= 2

    # plant repeats across shards of the first question: asked again with an answer of its own (kept:
    # the second under the cap), a third time (past the cap), and with the first's very answer
    (s0, i0), (s1, i1), (s2, i2), (s3, i3) = asked[0], asked[-1], asked[-2], asked[len(asked) // 2]
    first = rows[s0][i0]["conversations"]
    for s, i in ((s3, i3), (s2, i2), (s1, i1)):
        rows[s][i]["conversations"][0]["value"] = first[0]["value"]
    rows[s1][i1]["conversations"][1]["value"] = first[1]["value"]
    for s, t in enumerate(tables):
        if t is not None:
            pq.write_table(pa.Table.from_pylist(rows[s], schema=t.schema), run_dir.synthesis_records(s))
    want = one_pass([r for s in rows for r in s], fixed, 2)
    for per_partition in (4, 1_000):
        summary = instructions.finish(run_dir, stages, SerialTasks(), rows=len(synth["captions"]),
                                      rows_per_partition=per_partition)
        got = {r["id"]: r["reason"] for f in sorted(run_dir.instructions.glob("0*.parquet"))
               for r in pq.read_table(f).to_pylist()}
        assert got == want and summary["question_cap"] == 2
        assert got[rows[s3][i3]["id"]] is None and got[rows[s2][i2]["id"]] == "question_over_cap"
        assert got[rows[s1][i1]["id"]] == "duplicate_answer_across_run"
        assert summary["records"] == sum(len(r) for r in rows)
        assert summary["rejected_by_reason"]["question_over_cap"] == list(want.values()).count("question_over_cap")


def test_a_dead_teacher_fails_the_run_loudly_and_a_rerun_asks_again(tmp_path, tripwire):
    """Every request to a teacher that is not up fails: the run is written but exits 1 saying so; once
    the teacher is up (on another port: a loopback port is no change of the run), the same command
    asks exactly the failed requests, and llava.json and the ledger have every answer."""
    import socket

    from mmcurate.demo.teacher import StandInTeacher

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    pairs = shapes.pairs(4, seed=11, size=64)
    routes = {f"/s/{i}.png": Route(shapes.png(p.image), content_type="image/png") for i, p in enumerate(pairs)}
    with ImageServer(routes) as images:
        (tmp_path / "in.csv").write_text("url,caption\n" + "".join(
            f"{images.url(f'/s/{i}.png')},{p.caption}\n" for i, p in enumerate(pairs)))
        config = {"input": {"path": str(tmp_path / "in.csv")},
                  "download": {"allow_networks": ["127.0.0.1/32"], "retries": 0, "image_size": 64},
                  "dedup": {"exact": False, "phash": {"enabled": False}}, "clip": {"enabled": False}, **SAFETY_OFF,
                  "synthesis": {"enabled": True, "endpoint": f"http://127.0.0.1:{dead}/v1", "tasks": ["detail"],
                                "max_retries": 1, "timeout_s": 2},
                  "export": {"formats": ["parquet", "llava"]}}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        run = ["run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"), "--quiet"]
        first = run_cli(*run)
        assert first.returncode == 1, first.stderr
        assert "synthesis: 4 of 4 teacher requests failed (4 connection_error)" in first.stderr
        assert "more than synthesis.max_failed_fraction (0.5)" in first.stderr
        assert json.loads((tmp_path / "run" / "instructions" / "llava.json").read_text()) == []
        with StandInTeacher() as teacher:
            again = run_cli(*run, "--set", f"synthesis.endpoint={teacher.endpoint}")
            assert again.returncode == 0, again.stderr
            assert teacher.requests == 4 and "note:" not in again.stdout
            third = run_cli(*run, "--set", f"synthesis.endpoint={teacher.endpoint}")
            assert third.returncode == 0 and teacher.requests == 4  # nothing failed: nothing asked
    assert len(json.loads((tmp_path / "run" / "instructions" / "llava.json").read_text())) == 4
    ledger = pq.read_table(tmp_path / "run" / "ledger.parquet").to_pylist()
    assert [r["scores"]["synthesis_failed"] for r in ledger] == [0] * 4
    assert all("teacher requests failed" not in (r["detail"] or "") for r in ledger)
    assert len(pq.read_table(tmp_path / "run" / "shards" / "parquet")) == 4
