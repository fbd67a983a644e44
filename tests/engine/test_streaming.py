"""Stages stream: behind a slow host, a downstream stage finishes shards while downloads still run,
and the output is byte-identical to the same run with the stages one after another. On a terminal
the run shows one live line per stage and nothing else; with --quiet, nothing."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from datetime import datetime

import pytest
import yaml

from mmcurate.demo.server import ImageServer, Route
from tests.conftest import SAFETY_OFF, make_image, run_cli
from tests.jobs.test_resume import digests

pytestmark = pytest.mark.slow
ROWS, SHARD = 32, 4


def shard_times(run_dir, stage: str) -> list[tuple[datetime, datetime]]:
    stats = [json.loads(p.read_text()) for p in sorted((run_dir / "stages" / stage).glob("*.stats.json"))]
    return [(datetime.fromisoformat(s["started"]), datetime.fromisoformat(s["finished"])) for s in stats]


def on_a_terminal(*args: str) -> tuple[int, list[str]]:
    """Run the CLI with a pseudo-terminal as stdout and stderr; its exit code and the lines it drew
    (the last picture of each redraw, escape sequences removed)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "mmcurate", *args], stdout=follower, stderr=follower,
                            env={**os.environ, "COLUMNS": "120"})
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode(errors="replace"))
    return proc.wait(), [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]


STAGE_LINE = re.compile(r"^[a-z_-]+ +\d+/\d+ +shards +[\d,]+ rows +[\d,]+ rows/s$")


def test_downstream_stage_finishes_shards_before_the_last_download_starts(tmp_path):
    routes = {f"/{i}.jpg": Route(make_image(i)) for i in range(ROWS)}
    with ImageServer(routes, delay_s=0.2) as server:  # every response 200 ms late, as remote hosts are
        lines = [{"url": server.url(f"/{i}.jpg"), "caption": f"a picture number {i} of many"} for i in range(ROWS)]
        (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        config = {
            "input": {"path": str(tmp_path / "in.jsonl"), "shard_size": SHARD},
            "download": {"allow_networks": ["127.0.0.1/32"], "retries": 0, "threads": 1},
            "clip": {"enabled": False},
            "export": {"formats": ["parquet"]},
            **SAFETY_OFF,
        }
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        code, lines = on_a_terminal("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "streamed"))
        assert code == 0, lines
        barrier = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "barrier"), "--quiet",
                          "--set", "engine.streaming=false")
        assert barrier.returncode == 0 and barrier.stderr == "", barrier.stderr

    # the terminal showed the stages' live lines and the summary, and nothing of Ray's
    summary = [line for line in lines if line.split(":")[0] in ("run dir", "ledger", "report")]
    foreign = [line for line in lines if not STAGE_LINE.match(line) and line not in summary]
    assert len(summary) == 3 and not foreign, foreign
    final = {line.split()[0]: line.split()[1] for line in lines if STAGE_LINE.match(line)}
    assert final["download"] == final["features"] == f"{ROWS // SHARD}/{ROWS // SHARD}", final

    run_dir = tmp_path / "streamed"
    downloads = shard_times(run_dir, "download")
    features = shard_times(run_dir, "features")
    assert len(downloads) == len(features) == ROWS // SHARD
    last_download_start = max(start for start, _ in downloads)
    first_features_end = min(end for _, end in features)
    assert first_features_end < last_download_start, (downloads, features)
    # the barrier engine: every download shard finished before any features shard started
    b_downloads, b_features = shard_times(tmp_path / "barrier", "download"), shard_times(tmp_path / "barrier", "features")
    assert max(end for _, end in b_downloads) <= min(start for start, _ in b_features)

    assert digests(run_dir) == digests(tmp_path / "barrier")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["ledger"]["rows"] == ROWS and all(
        manifest["stages"][s]["status"] == "done" for s in ("download", "features", "dedup"))
