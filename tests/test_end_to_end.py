"""End to end through the command line and Ray: 600 rows from a loopback server, every failure route."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml

from mmcurate.demo.server import ImageServer, Route
from tests.conftest import EXPECTED, SAFETY_OFF, failure_routes, make_image, run_cli

pytestmark = pytest.mark.slow
N_IMAGES = 540


@pytest.fixture(scope="module")
def server():
    routes = failure_routes()
    for i in range(N_IMAGES):
        routes[f"/img/{i}.jpg"] = Route(make_image(i))
    with ImageServer(routes) as srv:
        yield srv


@pytest.fixture(scope="module")
def finished_run(server, tmp_path_factory, shapes_clip):
    tmp = tmp_path_factory.mktemp("e2e")
    lines = [{"url": server.url(f"/img/{i}.jpg"), "caption": f"picture number {i}"} for i in range(N_IMAGES)]
    for k in range(5):  # every failure route, five times over
        lines += [{"url": server.url(p), "caption": f"route {p} #{k}"} for p in EXPECTED]
    lines += [{"url": "gopher://x.test/", "caption": "old"}, {"url": "", "caption": "empty"}]
    (tmp / "urls.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    config = {
        "input": {"path": str(tmp / "urls.jsonl"), "shard_size": 100},
        "download": {"allow_networks": ["127.0.0.1/32"], "timeout_s": 1, "retries": 0, "image_size": 64},
        # the failure routes repeat the same images on purpose: this test is about download outcomes
        "dedup": {"exact": False, "phash": {"enabled": False}},
        # scored by the offline stand-in CLIP, no threshold: every kept image passes through it
        "clip": {"model": f"local-dir:{shapes_clip[0]}", "min_score": None, "batch_size": 64},
        **SAFETY_OFF,
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_cli("run", str(tmp / "config.yaml"), "--run-dir", str(tmp / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return tmp, lines, proc


def test_ledger_accounts_for_every_row(finished_run):
    tmp, lines, proc = finished_run
    ledger = pq.read_table(tmp / "run" / "ledger.parquet").to_pylist()
    assert len(ledger) == len(lines) + 1  # + the malformed line
    assert [r["row"] for r in ledger] == list(range(len(ledger)))
    counts = {s: sum(r["status"] == s for r in ledger) for s in ("kept", "dropped", "failed")}
    assert sum(counts.values()) == len(ledger)
    assert f"{len(ledger):,} rows = {counts['kept']:,} kept" in proc.stdout
    by_url = {r["url"]: r for r in ledger}
    for path, reason in EXPECTED.items():
        row = by_url[next(x["url"] for x in lines if x["url"].endswith(path))]
        assert row["reason"] == reason, (path, row)
        assert row["stage"] == (None if reason is None else "download")
    assert ledger[-1]["reason"] == "malformed_row" and ledger[-1]["stage"] == "ingest"
    kept = [r for r in ledger if r["status"] == "kept"]
    assert len(kept) == N_IMAGES + 5 * sum(v is None for v in EXPECTED.values())
    assert all(r["scores"]["width"] and r["scores"]["original_width"] == 96 for r in kept)
    manifest = json.loads((tmp / "run" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["ledger"]["rows"] == len(ledger)
    assert manifest["input"]["input_fingerprint"] and manifest["versions"]["ray"]
    assert (tmp / "run" / "report" / "index.html").exists()
    from mmcurate.engine.atomic import FILE_MODE  # the umask's mode, not the temp file's 0600

    for path in (tmp / "run" / "ledger.parquet", tmp / "run" / "manifest.json", tmp / "run" / "report" / "index.html",
                 next((tmp / "run" / "shards" / "webdataset").glob("*.tar"))):
        assert path.stat().st_mode & 0o777 == FILE_MODE, path


def test_webdataset_export_reads_back(finished_run):
    import webdataset as wds

    tmp, _, _ = finished_run
    tars = sorted(str(p) for p in (tmp / "run" / "shards" / "webdataset").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("pil"))
    ledger = pq.read_table(tmp / "run" / "ledger.parquet").to_pylist()
    kept = {r["uid"]: r for r in ledger if r["status"] == "kept"}
    assert len(samples) == len(kept)
    for s in samples[:50]:
        meta = s["json"]
        assert s["txt"] == kept[meta["uid"]]["caption"] and min(s["jpg"].size) == 64


def test_parquet_export_loads_with_datasets(finished_run):
    import datasets

    tmp, _, _ = finished_run
    files = sorted(str(p) for p in (tmp / "run" / "shards" / "parquet").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    ledger = pq.read_table(tmp / "run" / "ledger.parquet", columns=["status"]).to_pylist()
    assert ds.num_rows == sum(r["status"] == "kept" for r in ledger)
    assert {"uid", "url", "caption", "image", "width", "original_width", "download_bytes"} <= set(ds.column_names)


def test_status_audit_and_export_commands(finished_run, tmp_path):
    tmp, _, _ = finished_run
    run_dir = str(tmp / "run")
    status = run_cli("status", run_dir)
    assert status.returncode == 0 and "download" in status.stdout and "7/7" in status.stdout
    audit = run_cli("audit", run_dir, "--reason", "http_404", "--format", "json", "--limit", "0")
    rows = json.loads(audit.stdout)
    assert len(rows) == 5 and all(r["stage"] == "download" and r["detail"] == "HTTP 404 Not Found" for r in rows)
    uid = rows[0]["uid"]
    one = json.loads(run_cli("audit", run_dir, "--uid", uid, "--format", "json").stdout)
    assert [r["uid"] for r in one] == [uid]
    csv_out = run_cli("audit", run_dir, "--stage", "ingest", "--format", "csv").stdout.splitlines()
    assert csv_out[0].startswith("uid,row,") and len(csv_out) == 1 + 3
    table = run_cli("audit", run_dir, "--status", "failed", "--limit", "3").stdout
    assert "http_" in table or "timeout" in table or "bad_url" in table or "failed" in table
    out = tmp_path / "wds"
    exported = run_cli("export", run_dir, "--format", "webdataset", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(
        p.name for p in (tmp / "run" / "shards" / "webdataset").glob("*.tar"))
    for name in (p.name for p in out.glob("*.tar")):
        assert (out / name).read_bytes() == (tmp / "run" / "shards" / "webdataset" / name).read_bytes()


def test_rerun_of_a_finished_run_redoes_nothing(finished_run, server):
    tmp, _, _ = finished_run
    before = sum(server.requests.values())
    proc = run_cli("run", str(tmp / "config.yaml"), "--run-dir", str(tmp / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert sum(server.requests.values()) == before


def test_changed_config_is_refused_unless_forced(finished_run):
    tmp, _, _ = finished_run
    proc = run_cli("run", str(tmp / "config.yaml"), "--run-dir", str(tmp / "run"), "--set", "download.image_size=48")
    assert proc.returncode == 2
    assert "different config (changed: download.image_size)" in proc.stderr


def test_ledger_invariant_failure_is_loud(finished_run, tmp_path):
    import shutil

    from mmcurate.engine.rundir import RunDir
    from mmcurate.jobs.ledger import build_ledger
    from mmcurate.schemas.config import config_from_dict
    from mmcurate.schemas.errors import LedgerError
    from mmcurate.stages import build_stages

    tmp, _, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(tmp / "run", copy)
    run_dir = RunDir.at(copy)
    done = json.loads(run_dir.ingest_done().read_text())
    done["rows"] += 1  # the input claims one row more than the shards hold
    run_dir.ingest_done().write_text(json.dumps(done))
    config = config_from_dict(run_dir.read_manifest()["config"])
    with pytest.raises(LedgerError, match="ledger invariant broken"):
        build_ledger(run_dir, build_stages(config))


@pytest.mark.parametrize("rows", [[0, 1, 1], [0, 2, 3], [1, 0, 2], [0, 1]])
def test_ledger_check_finds_a_missing_repeated_or_misplaced_row(tmp_path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmcurate.engine.rundir import RunDir
    from mmcurate.jobs.ledger import check_invariant
    from mmcurate.schemas.errors import LedgerError

    run_dir = RunDir.at(tmp_path)
    pq.write_table(pa.table({"row": pa.array(rows, pa.int64()), "status": ["kept"] * len(rows)}), run_dir.ledger)
    with pytest.raises(LedgerError, match="ledger invariant broken"):
        check_invariant(run_dir, 3)
    pq.write_table(pa.table({"row": pa.array([0, 1, 2], pa.int64()), "status": ["kept", "dropped", "failed"]}),
                   run_dir.ledger)
    assert check_invariant(run_dir, 3) == {"rows": 3, "kept": 1, "dropped": 1, "failed": 1}


def test_an_unsupported_store_is_refused_not_made_a_local_folder(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"url": "http://127.0.0.1:9/a.jpg", "caption": "a"}\n')
    # every stage that could reach a model hub or a server is off, even if the check failed
    config = {"input": {"path": str(tmp_path / "in.jsonl")}, "download": {"allow_networks": ["127.0.0.1/32"]},
              "clip": {"enabled": False}, **SAFETY_OFF}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", "gs://bucket/runs/x", cwd=tmp_path)
    assert proc.returncode == 2 and "--run-dir: gs://bucket/runs/x: the gs:// scheme is not supported" in proc.stderr
    assert not (tmp_path / "gs:").exists()  # (s3:// run dirs: tests/storage)


def test_force_redoes_only_the_stages_a_change_affects(finished_run, server, tmp_path):
    import shutil

    tmp, _, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(tmp / "run", copy)
    before = sum(server.requests.values())
    download_stats = sorted((copy / "stages" / "download").glob("*.stats.json"))
    mtimes = [p.stat().st_mtime_ns for p in download_stats]
    proc = run_cli("run", str(tmp / "config.yaml"), "--run-dir", str(copy), "--quiet", "--force",
                   "--set", "dedup.exact=true")
    assert proc.returncode == 0, proc.stderr
    assert sum(server.requests.values()) == before  # nothing downloaded again
    assert [p.stat().st_mtime_ns for p in download_stats] == mtimes
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["config"]["dedup"]["exact"] is True and manifest["stages"]["dedup"]["status"] == "done"
    ledger = pq.read_table(copy / "ledger.parquet").to_pylist()
    assert any(r["reason"] == "exact_duplicate" for r in ledger)  # the repeated routes now count
