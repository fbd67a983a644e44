"""Crash loop: a run with every stage on (synthesis included) killed with SIGKILL ten times at
random moments, resumed each time, ends byte-identical to an uninterrupted run."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from skimage import data

from mmcurate.demo import shapes
from mmcurate.demo.server import ImageServer, Route
from mmcurate.demo.teacher import StandInTeacher
from tests.conftest import run_cli
from tests.jobs.test_resume import digests, kill_tree

pytestmark = pytest.mark.slow
KILLS = 10
TIMING = ("latency_s", "cached")  # when and how an answer arrived: the only fields a resume may change


def instruction_data(run_dir) -> tuple[str, list[dict]]:
    records = [r for f in sorted((run_dir / "instructions").glob("0*.parquet")) for r in pq.read_table(f).to_pylist()]
    return (run_dir / "instructions" / "llava.json").read_text(), [
        {k: v for k, v in r.items() if k not in TIMING} for r in records]


def running_stage(run_dir, runs_before: int = 0) -> str | None:
    """The first stage of the run's order that is not done yet, per its manifest (None until the
    run started after `runs_before` earlier ones has registered itself)."""
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if len(manifest.get("runs", [])) <= runs_before:
        return None
    done = manifest.get("stages", {})
    return next((s for s in manifest.get("stage_order", []) if done.get(s, {}).get("status") != "done"), "report")


def photo(name: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(getattr(data, name)()).convert("RGB").resize((128, 128)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_ten_sigkills_at_random_moments_then_identical_output(tmp_path, shapes_clip):
    model_dir, card = shapes_clip
    pairs = shapes.pairs(40, seed=11, size=64)
    routes = {f"/s/{i}.png": Route(shapes.png(p.image), content_type="image/png") for i, p in enumerate(pairs)}
    routes["/astronaut.jpg"] = Route(photo("astronaut"))
    with ImageServer(routes, delay_s=0.02) as server, StandInTeacher(latency_s=0.02) as teacher:
        lines = [{"url": server.url(f"/s/{i}.png"), "caption": p.caption} for i, p in enumerate(pairs)]
        lines += [{"url": server.url("/astronaut.jpg"), "caption": "an astronaut, mail me at a.b@example.com"},
                  {"url": server.url("/s/0.png"), "caption": "a fucking awful shape, shit"},
                  {"url": server.url("/gone.png"), "caption": "deleted"}]
        (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        config = {
            "input": {"path": str(tmp_path / "in.jsonl"), "shard_size": 5},
            "download": {"allow_networks": ["127.0.0.1/32"], "retries": 0, "image_size": 64, "threads": 4},
            "clip": {"model": f"local-dir:{model_dir}", "min_score": card["threshold"], "batch_size": 16},
            "safety": {"toxicity": {"model": "profanity-check"}},
            "synthesis": {"enabled": True, "endpoint": teacher.endpoint, "max_concurrency": 4},
            "export": {"formats": ["webdataset", "parquet", "llava"]},
        }
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        reference = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "ref"), "--quiet")
        assert reference.returncode == 0, reference.stderr

        rng = random.Random(20261123)
        run_dir = tmp_path / "crashing"
        order = json.loads((tmp_path / "ref" / "manifest.json").read_text())["stage_order"]
        # ten kill points spread over every stage, in order (a resumed run never goes back)
        targets = sorted(rng.choices(range(len(order)), k=KILLS))
        stages_at_kill = []
        for runs_before, target in enumerate(targets):
            proc = subprocess.Popen(
                [sys.executable, "-m", "mmcurate", "run", str(tmp_path / "c.yaml"), "--run-dir", str(run_dir), "--quiet"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            current = None
            while proc.poll() is None:
                current = running_stage(run_dir, runs_before)
                if current is not None and order.index(current) >= target:
                    break
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.0))  # somewhere inside that stage
            if proc.poll() is not None:
                break  # finished before the kill: the loop has done its job early
            stages_at_kill.append(running_stage(run_dir, runs_before))
            kill_tree(proc.pid)
            proc.wait()
        final = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(run_dir), "--quiet")
        assert final.returncode == 0, final.stderr

    print("killed during:", stages_at_kill)
    assert len(stages_at_kill) >= 8 and len(set(stages_at_kill)) >= 5, stages_at_kill
    assert digests(run_dir) == digests(tmp_path / "ref"), stages_at_kill
    assert instruction_data(run_dir) == instruction_data(tmp_path / "ref")
    assert not list(run_dir.rglob("*.tmp")), "temp files left behind"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["runs"]) >= len(stages_at_kill) + 1
