"""--retry-failed: transient download failures fetched again once their hosts recover; permanent
ones never; only the shards that changed are redone, and the result is a run that never failed."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml

from mmcurate.demo.server import ImageServer, Route
from tests.conftest import SAFETY_OFF, make_image, run_cli

pytestmark = pytest.mark.slow
N = 30
FLAKY = {0: Route(b"busy", 503, "text/plain"), 1: Route(b"busy", 503, "text/plain"), 2: Route(b"", 429, "text/plain"),
         3: Route(make_image(3), delay_s=2.5), 4: Route(make_image(4), delay_s=2.5), 5: Route(reset=True), 6: Route(reset=True)}
GONE = 7  # 404 on every try: never asked again


def good_routes() -> dict[str, Route]:
    return {f"/img/{i}.jpg": Route(make_image(i, size=(80, 60))) for i in range(N) if i != GONE}


def write_config(tmp, server, clip_model: str):
    lines = [{"url": server.url(f"/img/{i}.jpg"), "caption": f"picture number {i}"} for i in range(N)]
    (tmp / "urls.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    config = {
        "input": {"path": str(tmp / "urls.jsonl"), "shard_size": 10},
        "download": {"allow_networks": ["127.0.0.1/32"], "timeout_s": 1, "retries": 0, "image_size": 48},
        "dedup": {"phash": {"enabled": False}},  # exact dedup stays: a global stage, decided again
        "clip": {"model": f"local-dir:{clip_model}", "min_score": None, "batch_size": 16},
        **SAFETY_OFF,
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp / "config.yaml"


def run(config, run_dir, *extra):
    proc = run_cli("run", str(config), "--run-dir", str(run_dir), "--quiet", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return pq.read_table(run_dir / "ledger.parquet").to_pylist()


def test_retry_failed_recovers_transient_rows_and_redoes_only_what_changed(tmp_path, shapes_clip):
    with ImageServer({**good_routes(), **{f"/img/{i}.jpg": r for i, r in FLAKY.items()}}) as server:
        config = write_config(tmp_path, server, shapes_clip[0])
        first = run(config, tmp_path / "run")
        reasons = {r["row"]: r["reason"] for r in first}
        assert [reasons[i] for i in FLAKY] == ["http_503", "http_503", "http_429", "timeout", "timeout",
                                               "connection_error", "connection_error"]
        assert reasons[GONE] == "http_404"
        embed = tmp_path / "run" / "stages" / "clip_embed"
        untouched = {s: (embed / f"{s:06d}.stats.json").read_text() for s in (1, 2)}

        server.routes.update(good_routes())  # the hosts recover
        server.requests.clear()
        retried = run(config, tmp_path / "run", "--retry-failed")
        assert dict(server.requests) == {f"/img/{i}.jpg": 1 for i in FLAKY}  # the 404 and every good row: not asked
        by_row = {r["row"]: r for r in retried}
        assert all(by_row[i]["status"] == "kept" and by_row[i]["scores"]["download_attempts"] == 2 for i in FLAKY)
        assert by_row[GONE]["reason"] == "http_404" and by_row[GONE]["scores"]["download_attempts"] == 1
        assert {s: (embed / f"{s:06d}.stats.json").read_text() for s in (1, 2)} == untouched  # shards 1, 2: not redone
        manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
        assert manifest["retries"][-1]["recovered"] == len(FLAKY) and manifest["retries"][-1]["shards_changed"] == 1
        assert not (tmp_path / "run" / "retry.json").exists()

        clean = run(config, tmp_path / "clean")  # a run that never failed
    strip = [{**r, "scores": {k: v for k, v in r["scores"].items() if k != "download_attempts"}} for r in retried]
    assert strip == [{**r, "scores": {k: v for k, v in r["scores"].items() if k != "download_attempts"}} for r in clean]
    for fmt, ext in (("webdataset", "tar"), ("parquet", "parquet")):
        ours = sorted((tmp_path / "run" / "shards" / fmt).glob(f"*.{ext}"))
        assert [p.read_bytes() for p in ours] == [(tmp_path / "clean" / "shards" / fmt / p.name).read_bytes() for p in ours]
        assert len(ours) == len(list((tmp_path / "clean" / "shards" / fmt).glob(f"*.{ext}")))
