"""Resume: a run killed with SIGKILL mid-download finishes when rerun, redoes no finished shard,
and ends byte-identical to an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from mmcurate.demo.server import ImageServer, Route
from tests.conftest import SAFETY_OFF, make_image, run_cli

pytestmark = pytest.mark.slow
N, SHARD = 400, 25


def digests(run_dir: Path) -> dict[str, str]:
    """Content hashes of the ledger and every exported shard."""
    files = [run_dir / "ledger.parquet"] + sorted((run_dir / "shards").rglob("*.*"))
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (Ray puts some of its processes in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL a process, its process group and all its descendants at once."""
    victims = descendants(pid) | {pid}
    os.killpg(pid, signal.SIGKILL)
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_sigkill_mid_download_then_resume(tmp_path):
    routes = {f"/img/{i}.jpg": Route(make_image(i)) for i in range(N)}
    routes["/gone.jpg"] = Route(b"no", 404, "text/plain")
    with ImageServer(routes, delay_s=0.03) as server:
        lines = [{"url": server.url(f"/img/{i}.jpg"), "caption": f"image {i}"} for i in range(N)]
        lines[7] = {"url": server.url("/gone.jpg"), "caption": "gone"}
        (tmp_path / "urls.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        config = {
            "input": {"path": str(tmp_path / "urls.jsonl"), "shard_size": SHARD},
            "download": {"allow_networks": ["127.0.0.1/32"], "threads": 4, "retries": 0, "image_size": 48},
            "clip": {"enabled": False},
            **SAFETY_OFF,
        }
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))

        reference = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "ref"), "--quiet")
        assert reference.returncode == 0, reference.stderr

        server.requests.clear()
        run_dir = tmp_path / "killed"
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmcurate", "run", str(tmp_path / "c.yaml"), "--run-dir", str(run_dir), "--quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        stats_dir = run_dir / "stages" / "download"
        deadline = time.time() + 300
        while time.time() < deadline and len(list(stats_dir.glob("*.stats.json"))) < 3:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        kill_tree(proc.pid)  # the driver, its embedded Ray and every worker, as a crash would
        proc.wait()
        finished_before_kill = sorted(int(p.name[:6]) for p in stats_dir.glob("*.stats.json"))
        assert 3 <= len(finished_before_kill) < N // SHARD, finished_before_kill
        assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"

        status = run_cli("status", str(run_dir))
        assert status.returncode == 0 and f"{len(finished_before_kill)}/{N // SHARD}" in status.stdout

        resumed = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(run_dir), "--quiet")
        assert resumed.returncode == 0, resumed.stderr

        # no finished shard was downloaded twice
        for shard in finished_before_kill:
            urls = pq.read_table(run_dir / "stages" / "ingest" / f"{shard:06d}.parquet", columns=["url"])["url"]
            for url in urls.to_pylist():
                path = url.split(str(server.port), 1)[1]
                assert server.requests[path] == 1, (shard, path, server.requests[path])
        assert digests(run_dir) == digests(tmp_path / "ref")
        assert not list(run_dir.rglob("*.tmp")), "temp files left behind"
        assert json.loads((run_dir / "manifest.json").read_text())["status"] == "finished"


def test_a_run_dir_from_before_a_config_key_existed_resumes_without_redoing_work(tmp_path):
    n, shard = 20, 5
    routes = {f"/img/{i}.jpg": Route(make_image(i)) for i in range(n)}
    with ImageServer(routes) as server:
        lines = [{"url": server.url(f"/img/{i}.jpg"), "caption": f"image {i}"} for i in range(n)]
        (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        config = {"input": {"path": str(tmp_path / "in.jsonl"), "shard_size": shard},
                  "download": {"allow_networks": ["127.0.0.1/32"], "retries": 0}, "clip": {"enabled": False},
                  **SAFETY_OFF, "export": {"formats": ["parquet"]}}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        run_dir = tmp_path / "run"
        assert run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(run_dir), "--quiet").returncode == 0
        before = digests(run_dir)
        # as the previous version of mmcurate left it: no download.deadline_s in its config (the key
        # came later), another config hash, and one download shard not written yet (it crashed)
        manifest = json.loads((run_dir / "manifest.json").read_text())
        del manifest["config"]["download"]["deadline_s"]
        manifest["config_hash"] = "from-an-earlier-version"
        (run_dir / "manifest.json").write_text(json.dumps(manifest))
        for f in (run_dir / "stages" / "download").glob("000003.*"):
            f.unlink()
        requests = sum(server.requests.values())
        # a real change is still refused, and only the real change is named
        changed = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(run_dir), "--quiet",
                          "--set", "download.image_size=32")
        assert changed.returncode == 2 and "changed: download.image_size)" in changed.stderr, changed.stderr
        # the upgrade alone: resumes without --force, redoes only the missing shard
        proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(run_dir), "--quiet")
        assert proc.returncode == 0, proc.stderr
        assert sum(server.requests.values()) - requests == shard
    assert digests(run_dir) == before
