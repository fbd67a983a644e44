"""Curating a pool already downloaded against downloading it again, and --retry-failed against
running again from scratch, on the same rows in the same run of this script.

img2dataset makes the pool (webdataset tars) from a loopback server; mmcurate then runs the same
pipeline three ways: on the URL list (the `download` stage fetches every image), on the pool (the
`load` stage reads them in place; the server must see no request), and on a URL list whose hosts
fail a tenth of the rows with 503 at first: the run, then `--retry-failed` once they recover,
against a fresh run of the whole list. Loopback answers in microseconds: on the web, where a
download waits on far hosts (and a tenth to a half of them are gone), the pool's gain is larger.

    python bench/pools.py [--rows 2000] [--shard-size 250]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmcurate.demo.server import ImageServer, Route  # noqa: E402
from tests.conftest import SAFETY_OFF, make_image  # noqa: E402


def mmcurate(config: dict, tmp: Path, name: str, *extra: str) -> float:
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mmcurate", "run", str(tmp / f"{name}.yaml"), "--run-dir",
                           str(tmp / name), "--quiet", *extra], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return time.perf_counter() - start


def manifest(tmp: Path, name: str) -> dict:
    return json.loads((tmp / name / "manifest.json").read_text())


def kept(tmp: Path, name: str) -> int:
    return manifest(tmp, name)["ledger"]["kept"]


def stage_seconds(tmp: Path, name: str, stage: str) -> float:
    return manifest(tmp, name)["stages"][stage]["seconds_this_run"]


def redone(tmp: Path, name: str) -> dict[str, int]:
    """Shards each stage made in the last run of `name`."""
    return {s: e.get("shards_this_run", 0) for s, e in manifest(tmp, name)["stages"].items() if s != "ingest"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--latency-ms", type=float, default=100, help="the server's delay per request (a far host's)")
    args = parser.parse_args()
    n = args.rows
    images = {f"/img/{i}.jpg": Route(make_image(i, size=(320, 240))) for i in range(n)}
    flaky = {f"/img/{i}.jpg": Route(b"busy", 503, "text/plain") for i in range(0, n, 10)}
    common = {"dedup": {"phash": {"enabled": False}}, "clip": {"enabled": False}, **SAFETY_OFF}
    download = {"allow_networks": ["127.0.0.1/32"], "timeout_s": 5, "retries": 0, "image_size": 128}
    with tempfile.TemporaryDirectory() as d, ImageServer(dict(images), delay_s=args.latency_ms / 1000) as server:
        tmp = Path(d)
        rows = [{"url": server.url(f"/img/{i}.jpg"), "caption": f"picture number {i}", "uid": f"{i:032x}"} for i in range(n)]
        (tmp / "urls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        start = time.perf_counter()
        code = (f"from img2dataset import download; download(url_list={str(tmp / 'urls.jsonl')!r}, input_format='jsonl', "
                f"caption_col='caption', save_additional_columns=['uid'], output_folder={str(tmp / 'pool')!r}, "
                f"output_format='webdataset', processes_count=2, thread_count=16, image_size=256, "
                f"number_sample_per_shard={args.shard_size * 2}, distributor='multiprocessing', timeout=5, retries=0, "
                "disallowed_header_directives=[])")
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        i2d = time.perf_counter() - start
        urls = {"input": {"path": str(tmp / "urls.jsonl"), "shard_size": args.shard_size}, "download": download, **common}
        t_download = mmcurate(urls, tmp, "download")
        server.requests.clear()
        pool = {"input": {"path": str(tmp / "pool" / "*.tar"), "shard_size": args.shard_size},
                "download": {"image_size": 128}, **common}
        t_pool = mmcurate(pool, tmp, "pool")
        requests = sum(server.requests.values())

        server.routes.update(flaky)
        t_failing = mmcurate(urls, tmp, "retry")
        failed_first = kept(tmp, "download") - kept(tmp, "retry")
        server.routes.update(images)
        server.requests.clear()
        t_retry = mmcurate(urls, tmp, "retry", "--retry-failed")
        retried = sum(server.requests.values())
        t_fresh = mmcurate(urls, tmp, "fresh")
        same = kept(tmp, "retry") == kept(tmp, "fresh")
        tars = [(tmp / "retry" / "shards" / "webdataset" / p.name).read_bytes() == p.read_bytes()
                for p in sorted((tmp / "fresh" / "shards" / "webdataset").glob("*.tar"))]

        s_download, s_load = stage_seconds(tmp, "download", "download"), stage_seconds(tmp, "pool", "load")
        again, fresh = redone(tmp, "retry"), redone(tmp, "fresh")

    print(f"{n:,} rows, shards of {args.shard_size}, {args.latency_ms:g} ms a request; img2dataset made the pool in {i2d:.1f} s")
    print(f"URL list: whole run {t_download:6.1f} s; download stage {s_download:6.1f} s ({n / s_download:7.1f} rows/s)")
    print(f"pool:     whole run {t_pool:6.1f} s; load stage     {s_load:6.1f} s ({n / s_load:7.1f} rows/s); "
          f"stage {s_download / s_load:.1f}x, run {t_download / t_pool:.2f}x; requests to the server: {requests}")
    print(f"a tenth failing (503): {t_failing:6.1f} s, {failed_first} rows failed")
    print(f"--retry-failed: {t_retry:6.1f} s, {retried} requests, vs a fresh run {t_fresh:6.1f} s ({n} requests): "
          f"{t_fresh / t_retry:.2f}x; same kept rows: {same}; tars identical: {all(tars)} ({len(tars)})")
    print("shards made per stage, retry vs fresh:", {s: f"{again.get(s, 0)}/{fresh[s]}" for s in fresh})


if __name__ == "__main__":
    main()
