"""A real multi-node Ray cluster on loopback (a head and two worker nodes): a job attached with
`--address` survives losing a worker node mid-run, and its output equals a single-node run's."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from mmcurate.demo.server import ImageServer, Route
from tests.conftest import SAFETY_OFF, make_image, run_cli
from tests.jobs.test_resume import digests

pytestmark = pytest.mark.slow
N, SHARD = 240, 12


def test_losing_a_worker_node_mid_run(tmp_path):
    from ray.cluster_utils import Cluster

    routes = {f"/img/{i}.jpg": Route(make_image(i)) for i in range(N)}
    # Ray binds its nodes to this machine's own address, as it does for every embedded run: the
    # traffic between the nodes never leaves the host (pinning them to 127.0.0.1 leaves a driver
    # unable to find its raylet)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    address = cluster.address
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        with ImageServer(routes, delay_s=0.04) as server:
            lines = [{"url": server.url(f"/img/{i}.jpg"), "caption": f"image {i}"} for i in range(N)]
            (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
            config = {
                "input": {"path": str(tmp_path / "in.jsonl"), "shard_size": SHARD},
                "download": {"allow_networks": ["127.0.0.1/32"], "threads": 2, "retries": 0, "image_size": 48},
                "clip": {"enabled": False},
                **SAFETY_OFF,
                "export": {"formats": ["webdataset", "parquet"]},
            }
            (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
            run_dir = tmp_path / "cluster-run"
            proc = subprocess.Popen(
                [sys.executable, "-m", "mmcurate", "run", str(tmp_path / "c.yaml"), "--run-dir", str(run_dir),
                 "--address", address, "--quiet"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            stage_dir = run_dir / "stages" / "download"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(list(stage_dir.glob("*.stats.json"))) < 3:
                time.sleep(0.1)
            done_before = len(list(stage_dir.glob("*.stats.json")))
            assert 0 < done_before < N // SHARD, "the kill must land mid-download"
            # the worker node is killed, not drained: SIGKILL to its raylet and store, at once, with
            # its tasks mid-flight (graceful removal would let them finish first)
            cluster.remove_node(workers[0], allow_graceful=False)
            out, err = proc.communicate(timeout=400)
            assert proc.returncode == 0, err[-3000:]
            reference = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "single"), "--quiet")
            assert reference.returncode == 0, reference.stderr
    finally:
        cluster.shutdown()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["runs"][-1]["address"] == address
    ledger = manifest["ledger"]
    assert ledger["rows"] == N == ledger["kept"] + ledger["dropped"] + ledger["failed"]
    assert digests(run_dir) == digests(tmp_path / "single")
