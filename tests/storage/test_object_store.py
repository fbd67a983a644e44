"""Run dirs and inputs on an object store: a real S3 API server on loopback (moto), reached through
the standard AWS environment variables, with the tripwire failing anything outside 127.0.0.0/8."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq
import pytest
import s3fs
import yaml

from mmcurate.engine import atomic, lease
from mmcurate.engine.rundir import RunDir, RunLock
from mmcurate.schemas import columns as C
from mmcurate.schemas.errors import ConfigError, InputError
from mmcurate.storage import paths
from tests.conftest import SAFETY_OFF, make_image, run_cli
from tests.jobs.test_resume import kill_tree


def store() -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(use_listings_cache=False)


def test_locations_with_credentials_or_other_schemes_are_refused():
    with pytest.raises(ConfigError, match="--run-dir: s3://…: credentials do not belong"):
        RunDir.at("s3://AKIAEXAMPLE:secret@bucket/run")
    with pytest.raises(ConfigError, match="--run-dir: gs://b/r: the gs:// scheme is not supported"):
        RunDir.at("gs://b/r")
    assert not RunDir.at("relative/run").remote
    proc = run_cli("export", "s3://b/run", "--format", "parquet", "--out", "s3://b/cut")
    assert proc.returncode == 2 and "--out s3://b/cut: export writes to a local folder" in proc.stderr


def test_credentials_in_the_input_location_are_refused_before_anything_is_written(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"input": {"path": "s3://AKIAEXAMPLE:se/cret@bucket/in/*.csv"}}))
    proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2 and "input.path: s3://…: credentials do not belong in a location" in proc.stderr
    assert "cret" not in proc.stderr and not (tmp_path / "run").exists()


def test_files_appear_whole_and_the_lock_is_a_lease(s3_env, tripwire, monkeypatch):
    run_dir = RunDir.at(f"s3://{s3_env['bucket']}/runs/one/")
    assert run_dir.remote and str(run_dir.root) == f"s3://{s3_env['bucket']}/runs/one"
    run_dir.make()
    atomic.write_json(run_dir.stats_file("download", 3), {"kept": 1})
    atomic.write_parquet(run_dir.shard_file("download", 3), pa.table({"row": [1, 2]}))
    assert run_dir.is_done("download", 3) and run_dir.read_stats("download", 3) == {"kept": 1}
    assert run_dir.read_shard("download", 3)["row"].to_pylist() == [1, 2]
    assert paths.names(run_dir.stage_dir("download")) == {"000003.stats.json", "000003.parquet"}
    with atomic.atomic_folder(run_dir.ledger) as parts:  # a ledger in parts: written under a temp prefix, then moved
        atomic.write_parquet(parts / "part-000000.parquet", pa.table({"row": [0]}))
        assert not run_dir.ledger.exists()
    assert [p.name for p in run_dir.ledger_files()] == ["part-000000.parquet"]
    assert not [k for k in store().find(s3_env["bucket"]) if k.endswith(".tmp") or "/.ledger" in k]

    with RunLock(run_dir):  # a live holder on this host: refused, naming it
        with pytest.raises(ConfigError, match=f"in use by pid {os.getpid()}"):
            RunLock(run_dir).__enter__()
    assert not (run_dir.root / ".lock").exists()  # released
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run_dir.root / ".lock").write_text(json.dumps({"host": lease.socket.gethostname(), "boot": lease._boot_id(),
                                                    "pid": int(dead.stdout), "token": "x", "renewed": time.time()}))
    with RunLock(run_dir):  # a killed run's lease: taken over
        assert json.loads((run_dir.root / ".lock").read_text())["pid"] == os.getpid()
    (run_dir.root / ".lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "y",
                                                    "renewed": time.time() - lease.EXPIRES_S - 1}))
    monkeypatch.setattr(lease, "RENEW_S", 0.05)
    with RunLock(run_dir) as lock:  # a lease elsewhere not renewed for EXPIRES_S: taken over
        assert json.loads((run_dir.root / ".lock").read_text())["token"] == lock._lease.me["token"]
        (run_dir.root / ".lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "z", "renewed": time.time()}))
        deadline = time.time() + 10
        while lock._lease.lost is None and time.time() < deadline:
            time.sleep(0.05)
        with pytest.raises(ConfigError, match="lost its lease to pid 1 on elsewhere"):
            lock.check()  # the run stops; the other run's lease is never overwritten
    assert json.loads((run_dir.root / ".lock").read_text())["token"] == "z"  # nor removed on release
    (run_dir.root / ".lock").unlink()
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket' does not exist"):
        RunDir.at("s3://no-such-bucket/run").make()


def test_inputs_on_s3_read_and_fingerprinted_like_local_files(s3_env, tripwire, tmp_path):
    import gzip

    from mmcurate import ingest
    from mmcurate.schemas.config import InputConfig

    bucket, fs = s3_env["bucket"], store()
    pq.write_table(pa.table({"url": [f"http://h/{i}.jpg" for i in range(30)], "caption": ["c"] * 30}),
                   tmp_path / "a.parquet", row_group_size=10)
    fs.put_file(str(tmp_path / "a.parquet"), f"{bucket}/in/a.parquet")
    fs.pipe_file(f"{bucket}/in/b.csv.gz", gzip.compress(b"url,caption\nhttp://h/x.jpg,one\nhttp://h/y.jpg,two\n"))
    files = ingest.resolve_inputs(f"s3://{bucket}/in/*")
    assert [str(f) for f in files] == [f"s3://{bucket}/in/a.parquet", f"s3://{bucket}/in/b.csv.gz"]
    units = ingest.units(files, rows_per_unit=10)
    assert [(u.path.rsplit("/", 1)[1], u.row_groups) for u in units] == [("a.parquet", (0,)), ("a.parquet", (1,)),
                                                                         ("a.parquet", (2,)), ("b.csv.gz", None)]
    cfg = InputConfig(path=f"s3://{bucket}/in/*")
    rows = [r for f in files for r in ingest.read_rows(f, cfg)]
    assert len(rows) == 32 and rows[-1].caption == "two" and rows[-1].source == f"s3://{bucket}/in/b.csv.gz"
    record = ingest.file_record(files[0])
    assert record["etag"] and record["size"] == (tmp_path / "a.parquet").stat().st_size
    assert record["sha256"] == ingest.file_record(tmp_path / "a.parquet")["sha256"]
    with pytest.raises(InputError, match="input.path: no file matches"):
        ingest.resolve_inputs(f"s3://{bucket}/nothing/*.csv")


def test_the_teacher_cache_goes_out_as_whole_objects(s3_env, tripwire):
    from mmcurate.stages.synthesis import cache

    run_dir = RunDir.at(f"s3://{s3_env['bucket']}/run")
    path = run_dir.cache_file("synthesis", 2)
    with cache.ResponseCache(path) as answers:
        for i in range(cache.BATCH + 5):
            answers.put(f"h{i}", {"answer": i})
        assert len(paths.names(path.parent / "000002")) == 1  # the first BATCH, already out
    assert sorted(paths.names(path.parent / "000002")) == ["000000.jsonl", "000001.jsonl"]
    with cache.ResponseCache(path) as again:  # a rerun finds every answer, and adds after them
        assert again.get(f"h{cache.BATCH + 4}") == {"answer": cache.BATCH + 4} and len(again.entries) == cache.BATCH + 5
        again.put("new", {"answer": -1})
    assert sorted(paths.names(path.parent / "000002"))[-1] == "000002.jsonl"


N, SHARD = 240, 20


# datasets' fingerprint in state.json hashes the writer's closure, which names the run dir
VARIES = ("shards/hf/state.json",)


def object_digests(fs: s3fs.S3FileSystem, root: str) -> dict[str, str]:
    keys = [k for k in fs.find(root) if (k.startswith(f"{root}/ledger.parquet") or k.startswith(f"{root}/shards/"))
            and k[len(root) + 1:] not in VARIES]
    return {k[len(root) + 1:]: hashlib.sha256(fs.cat_file(k)).hexdigest() for k in sorted(keys)}


def local_digests(root) -> dict[str, str]:
    files = sorted(p for folder in ("ledger.parquet", "shards") for p in (root / folder).rglob("*") if p.is_file()
                   and str(p.relative_to(root)) not in VARIES)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.slow
def test_a_run_on_s3_killed_and_resumed_is_byte_identical(tmp_path, s3_env, subprocess_tripwire, tripwire):
    from mmcurate.demo.server import ImageServer, Route

    wire_env, wire_log = subprocess_tripwire
    bucket, fs = s3_env["bucket"], store()
    routes = {f"/img/{i}.jpg": Route(make_image(i)) for i in range(N)}
    routes["/gone.jpg"] = Route(b"no", 404, "text/plain")
    with ImageServer(routes, delay_s=0.03) as server:
        lines = [{"url": server.url(f"/img/{i}.jpg"), "caption": f"image {i}"} for i in range(N)]
        lines[5] = {"url": server.url("/gone.jpg"), "caption": "gone"}
        text = "\n".join(json.dumps(x) for x in lines) + "\n"
        fs.pipe_file(f"{bucket}/input/urls-0.jsonl", text[: len(text) // 2].rsplit("\n", 1)[0].encode() + b"\n")
        fs.pipe_file(f"{bucket}/input/urls-1.jsonl", text[len(text[: len(text) // 2].rsplit("\n", 1)[0]) + 1:].encode())
        (tmp_path / "input").mkdir()
        for name in ("urls-0.jsonl", "urls-1.jsonl"):
            (tmp_path / "input" / name).write_bytes(fs.cat_file(f"{bucket}/input/{name}"))
        base = {
            "download": {"allow_networks": ["127.0.0.1/32"], "threads": 4, "retries": 0, "image_size": 48},
            "clip": {"enabled": False}, "export": {"formats": ["webdataset", "parquet", "hf"]}, **SAFETY_OFF,
            "engine": {"ledger_part_rows": 100},  # the ledger in parts, with its uid index
        }
        (tmp_path / "local.yaml").write_text(yaml.safe_dump(
            {**base, "input": {"path": str(tmp_path / "input" / "*.jsonl"), "shard_size": SHARD}}))
        (tmp_path / "s3.yaml").write_text(yaml.safe_dump(
            {**base, "input": {"path": f"s3://{bucket}/input/*.jsonl", "shard_size": SHARD}}))
        reference = run_cli("run", str(tmp_path / "local.yaml"), "--run-dir", str(tmp_path / "ref"), "--quiet")
        assert reference.returncode == 0, reference.stderr
        reference = run_cli("run", str(tmp_path / "s3.yaml"), "--run-dir", f"s3://{bucket}/runs/ref", "--quiet", env=wire_env)
        assert reference.returncode == 0, reference.stderr

        run_dir = f"s3://{bucket}/runs/killed"
        env = {**os.environ, **wire_env}
        proc = subprocess.Popen([sys.executable, "-m", "mmcurate", "run", str(tmp_path / "s3.yaml"), "--run-dir", run_dir,
                                 "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
        stats = f"{bucket}/runs/killed/stages/download"
        deadline = time.time() + 300
        while time.time() < deadline and len(fs.glob(f"{stats}/*.stats.json")) < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
        kill_tree(proc.pid)
        proc.wait()
        done_before = sorted(fs.glob(f"{stats}/*.stats.json"))
        assert 2 <= len(done_before) < N // SHARD, done_before
        assert json.loads(fs.cat_file(f"{bucket}/runs/killed/manifest.json"))["status"] == "running"

        status = run_cli("status", run_dir, env=wire_env)
        assert status.returncode == 0 and f"{len(done_before)}/{N // SHARD}" in status.stdout, status.stdout + status.stderr
        server.requests.clear()
        resumed = run_cli("run", str(tmp_path / "s3.yaml"), "--run-dir", run_dir, "--quiet", env=wire_env)
        assert resumed.returncode == 0, resumed.stderr

    for key in done_before:  # no finished shard was downloaded again
        shard = int(key.rsplit("/", 1)[1][:6])
        urls = paths.read_table(paths.as_path(f"s3://{bucket}/runs/killed/stages/ingest/{shard:06d}.parquet"), ["url"])
        assert all(server.requests[u.split(str(server.port), 1)[1]] == 0 for u in urls["url"].to_pylist())
    killed = object_digests(fs, f"{bucket}/runs/killed")
    assert killed == object_digests(fs, f"{bucket}/runs/ref")
    # and the same as the run on local files, but for the ledger's `source` (the input's location)
    local = local_digests(tmp_path / "ref")
    assert len([k for k in killed if k.startswith("ledger.parquet/part-")]) == 3
    assert {k: v for k, v in killed.items() if not k.startswith("ledger")} == {k: v for k, v in local.items() if not k.startswith("ledger")}
    on_s3 = paths.read_table(paths.as_path(f"s3://{bucket}/runs/killed/ledger.parquet"))
    on_disk = pq.read_table(tmp_path / "ref" / "ledger.parquet")
    assert on_s3.drop_columns(["source"]).equals(on_disk.drop_columns(["source"]))
    assert set(on_s3["source"].to_pylist()) == {f"s3://{bucket}/input/urls-{i}.jsonl" for i in (0, 1)}
    keys = fs.find(f"{bucket}/runs/killed")
    assert not [k for k in keys if k.endswith(".tmp") or "/." in k.replace("/.lock", "")], "temp objects left behind"
    assert f"{bucket}/runs/killed/.lock" not in keys
    assert json.loads(fs.cat_file(f"{bucket}/runs/killed/manifest.json"))["status"] == "finished"
    secret = s3_env["AWS_SECRET_ACCESS_KEY"].encode()
    assert not [k for k in keys if secret in fs.cat_file(k)], "a secret was written to the run dir"
    import datasets

    hf = datasets.load_from_disk(f"s3://{bucket}/runs/killed/shards/hf")  # `datasets` as the client, on the store
    kept = on_s3.filter(pa.compute.equal(on_s3["status"], "kept")).num_rows
    assert hf.num_rows == datasets.load_from_disk(str(tmp_path / "ref" / "shards" / "hf")).num_rows == kept > 0
    audit = run_cli("audit", run_dir, "--reason", "http_404", env=wire_env)
    assert audit.returncode == 0 and "gone" in audit.stdout, audit.stdout + audit.stderr
    uid = on_s3["uid"][5].as_py()
    audit = run_cli("audit", run_dir, "--uid", uid, env=wire_env)  # through the uid index on the bucket
    assert audit.returncode == 0 and "http_404" in audit.stdout, audit.stdout + audit.stderr
    attempts = wire_log.read_text().splitlines() if wire_log.exists() else []
    assert all(line.startswith("ray-cloud-probe ") for line in attempts if line[:1] != " "), "\n".join(attempts)


def test_a_webdataset_pool_on_s3_read_in_place(s3_env, tripwire, tmp_path):
    from mmcurate.ingest import pools
    from mmcurate.schemas.config import InputConfig
    from tests.ingest.test_pools import ingested, sample, write_tar

    bucket, fs = s3_env["bucket"], store()
    for k in range(2):
        write_tar(tmp_path / f"{k:05d}.tar", sample(f"{k:05d}0000", k, "f" * 32) + sample(f"{k:05d}0001", k + 10))
        fs.put_file(str(tmp_path / f"{k:05d}.tar"), f"{bucket}/pool/{k:05d}.tar")
    cfg = InputConfig(path=f"s3://{bucket}/pool/{{00000..00001}}.tar")
    rows = ingested(cfg)
    assert [r["source_key"] for r in rows] == ["000000000", "000000001", "000010000", "000010001"]
    assert all(r["status"] == "kept" and r["source"].startswith("s3://") for r in rows)
    table = pa.Table.from_pylist(rows, schema=C.POOL_INGEST_SCHEMA)
    assert pools.read_images(table, cfg, ".", 1 << 20) == [make_image(i) for i in (0, 10, 1, 11)]
