"""Curating a pool already downloaded: img2dataset itself makes it from a loopback server (as
webdataset tars and as parquet), then `mmcurate run` reads it without a single request, keeps every
member accounted for, and carries each sample's key and uid to the ledger and every export."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from mmcurate.demo.server import ImageServer, Route
from tests.conftest import SAFETY_OFF, make_image, run_cli

pytestmark = pytest.mark.slow
N = 24


def uid(i: int) -> str:
    return hashlib.sha256(f"pool-{i}".encode()).hexdigest()[:32]  # DataComp's form: 128 bits, hex


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """img2dataset's own output of N images + a 404 + a non-image, in both of its formats."""
    tmp = tmp_path_factory.mktemp("pool")
    routes = {f"/img/{i}.jpg": Route(make_image(i, size=(120, 90))) for i in range(N)}
    routes["/bad.jpg"] = Route(b"<html>nope</html>", content_type="image/jpeg")
    with ImageServer(routes) as server:
        rows = [{"url": server.url(f"/img/{i}.jpg"), "caption": f"a picture of shape {i}", "uid": uid(i)} for i in range(N)]
        rows += [{"url": server.url("/missing.jpg"), "caption": "gone", "uid": uid(100)},
                 {"url": server.url("/bad.jpg"), "caption": "broken", "uid": uid(101)}]
        (tmp / "urls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for fmt in ("webdataset", "parquet"):
            code = (f"from img2dataset import download; download(url_list={str(tmp / 'urls.jsonl')!r}, input_format='jsonl', "
                    f"caption_col='caption', save_additional_columns=['uid'], output_folder={str(tmp / fmt)!r}, "
                    f"output_format={fmt!r}, processes_count=1, thread_count=4, image_size=64, number_sample_per_shard=10, "
                    "distributor='multiprocessing', timeout=5, retries=0, disallowed_header_directives=[])")
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
        yield tmp, rows, server


def run(tmp, name: str, input_cfg: dict, clip_model: str) -> list[dict]:
    config = {"input": {**input_cfg, "shard_size": 8},
              "dedup": {"phash": {"enabled": False}},  # the test's drawn images are near each other by design
              "clip": {"model": f"local-dir:{clip_model}", "min_score": None, "batch_size": 16}, **SAFETY_OFF}
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config))
    proc = run_cli("run", str(tmp / f"{name}.yaml"), "--run-dir", str(tmp / name), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return pq.read_table(tmp / name / "ledger.parquet").to_pylist()


def corrupt(tar_path) -> str:
    """One image member of the tar replaced by bytes that are no image; its key."""
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    victim = next(m.name for m, _ in members if m.name.endswith(".jpg"))
    with tarfile.open(tar_path, "w") as tar:
        for m, data in members:
            data = b"\xff\xd8 this is not a jpeg" if m.name == victim else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    return victim.split(".")[0]


@pytest.fixture(scope="module")
def wds_run(pool, shapes_clip):
    tmp, rows, server = pool
    before = sum(server.requests.values())
    tars = sorted((tmp / "webdataset").glob("*.tar"))
    bad_key = corrupt(tars[0])
    data = tars[-1].read_bytes()
    with tarfile.open(tars[-1]) as tar:
        last = [m for m in tar.getmembers() if m.name.endswith(".jpg")][-1]
    tars[-1].write_bytes(data[:last.offset_data + 50])  # a download cut short: the tar ends inside an image
    ledger = run(tmp, "wds-run", {"path": str(tmp / "webdataset" / f"{{00000..{len(tars) - 1:05d}}}.tar")}, shapes_clip[0])
    assert sum(server.requests.values()) == before  # not one request: the pixels are in the pool
    return tmp, rows, ledger, bad_key, last.name.split(".")[0]


def test_webdataset_pool_every_member_accounted_for(wds_run):
    tmp, rows, ledger, bad_key, cut_key = wds_run
    assert [r["row"] for r in ledger] == list(range(N))  # img2dataset's N images; the 404 and the non-image it left out
    by_key = {r["source_key"]: r for r in ledger}
    assert (by_key[bad_key]["stage"], by_key[bad_key]["reason"]) == ("load", "not_an_image")
    assert (by_key[cut_key]["stage"], by_key[cut_key]["reason"]) == ("ingest", "truncated")
    uids = {r["url"]: r["uid"] for r in rows}
    for r in (r for r in ledger if r["source_key"] != cut_key):  # the cut sample's json is past the end
        assert r["source_uid"] == uids[r["url"]] and r["caption"].startswith("a picture of shape")
    kept = [r for r in ledger if r["status"] == "kept"]
    assert len(kept) == N - 2 and all(r["scores"]["original_width"] == 120 for r in kept)  # the pool's record
    manifest = json.loads((tmp / "wds-run" / "manifest.json").read_text())
    assert "download" not in manifest["stages"] and manifest["stages"]["load"]["status"] == "done"


def test_pool_exports_carry_the_pools_ids(wds_run, tmp_path):
    import datasets
    import webdataset as wds

    tmp, rows, ledger, _, _ = wds_run
    kept = {r["source_uid"]: r for r in ledger if r["status"] == "kept"}
    run_dir = str(tmp / "wds-run")
    out = tmp_path / "wds"
    assert run_cli("export", run_dir, "--format", "webdataset", "--out", str(out), "--samples-per-shard", "5").returncode == 0
    tars = sorted(out.glob("*.tar"))
    assert len(tars) == -(-len(kept) // 5)
    samples = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False).decode("pil"))
    assert [len(list(wds.WebDataset(str(t), shardshuffle=False))) for t in tars[:-1]] == [5] * (len(tars) - 1)
    assert [s["json"]["source_uid"] for s in samples] == [r["source_uid"] for r in sorted(kept.values(), key=lambda r: r["row"])]
    keys = pq.read_table(out / "keys.parquet").to_pylist()
    assert [k["key"] for k in keys] == [s["__key__"] for s in samples] and keys[0]["file"] == "000000.tar"
    assert json.loads((out / "mmcurate_export.json").read_text())["samples_per_shard"] == 5

    out = tmp_path / "parquet"
    assert run_cli("export", run_dir, "--format", "parquet", "--out", str(out), "--samples-per-shard", "7").returncode == 0
    ds = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in out.glob("0*.parquet")), split="train")
    assert ds.num_rows == len(kept) and {"source_key", "source_uid", "url", "image"} <= set(ds.column_names)

    out = tmp_path / "ids"
    proc = run_cli("export", run_dir, "--format", "ids", "--out", str(out), "--where", "width >= 0")
    assert proc.returncode == 0, proc.stderr
    ids = np.load(out / "ids.npy")
    assert ids.dtype == np.dtype("u8,u8") and len(ids) == len(kept)
    halves = [(int(a), int(b)) for a, b in ids]
    assert halves == sorted(halves) and np.array_equal(np.sort(ids), ids)  # sorted, as DataComp's resharder wants
    assert {f"{int(a):016x}{int(b):016x}" for a, b in ids} == set(kept)
    table = pq.read_table(out / "ids.parquet").to_pylist()
    assert [r["source_uid"] for r in table] == [r["source_uid"] for r in sorted(kept.values(), key=lambda r: r["row"])]


def test_img2dataset_parquet_pool(pool, shapes_clip):
    tmp, rows, server = pool
    before = sum(server.requests.values())
    ledger = run(tmp, "parquet-run", {"path": str(tmp / "parquet" / "*.parquet"), "format": "img2dataset_parquet"},
                 shapes_clip[0])
    assert sum(server.requests.values()) == before
    assert len(ledger) == len(rows)  # img2dataset's parquet keeps its failures: each one a row here
    by_uid = {r["source_uid"]: r for r in ledger}
    assert by_uid[uid(100)]["reason"] == "missing_image" and "404" in by_uid[uid(100)]["detail"]
    assert by_uid[uid(101)]["reason"] == "missing_image" and by_uid[uid(101)]["stage"] == "ingest"
    good = [by_uid[uid(i)] for i in range(N)]
    assert all(r["source_key"] and r["url"].endswith(f"/img/{i}.jpg") for i, r in enumerate(good))
    assert all(r["status"] == "kept" for r in good)
