"""A run with its input and run dir on an S3 API server against the same run on local files: the
wall time as a ratio, and every request the run makes to the store, by kind and per shard, for a
first run and for a resume with nothing left to do. From the counts, the requests (and their
price at AWS S3 Standard's list prices) a run of DataComp large would make.

The server is moto's, on loopback, in this process: it answers far slower than S3 per request
(pure Python), so the ratio is an upper bound for the store's overhead; the counts are what they
would be anywhere.

    python bench/object_store.py [--rows 2000] [--shard-size 100]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmcurate.demo.server import ImageServer, Route  # noqa: E402
from tests.conftest import SAFETY_OFF, make_image  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours some request lines
REQUEST = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP')
# AWS S3 Standard, us-east-1, per 1,000 requests (2026 list prices)
PRICE = {"PUT/POST/LIST": 0.005, "GET/HEAD": 0.0004}


class Requests(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.kinds: Counter[str] = Counter()
        self.where: Counter[tuple[str, str]] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        m = REQUEST.search(ANSI.sub("", record.getMessage()))
        if m:
            method, target = m.groups()
            kind = "LIST" if method == "GET" and "list-type=2" in target else method
            kind = "DELETE" if method == "POST" and "?delete" in target else kind
            self.kinds[kind] += 1
            self.where[(kind, re.sub(r"\d{6}", "N", target.split("?")[0].split("/", 3)[-1]))] += 1


def run(config: Path, run_dir: str, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mmcurate", "run", str(config), "--run-dir", run_dir, "--quiet"],
                          capture_output=True, text=True, env={**os.environ, **env}, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--top", type=int, default=0, help="also print the N most requested (kind, key pattern)")
    args = ap.parse_args()
    from moto.server import ThreadedMotoServer

    counter = Requests()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False
    werkzeug.addHandler(counter)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    os.environ.update(env)
    import s3fs

    fs = s3fs.S3FileSystem(use_listings_cache=False)
    fs.mkdir("bench")
    tmp = Path(tempfile.mkdtemp(prefix="mmcurate-s3-"))
    shards = -(-args.rows // args.shard_size)
    with ImageServer({f"/img/{i}.jpg": Route(make_image(i)) for i in range(args.rows)}) as images:
        text = "".join(json.dumps({"url": images.url(f"/img/{i}.jpg"), "caption": f"image {i}"}) + "\n"
                       for i in range(args.rows))
        (tmp / "urls.jsonl").write_text(text)
        fs.pipe_file("bench/input/urls.jsonl", text.encode())
        base = {"download": {"allow_networks": ["127.0.0.1/32"], "threads": 8, "retries": 0, "image_size": 48},
                "clip": {"enabled": False}, **SAFETY_OFF}
        for name, path in (("local", str(tmp / "urls.jsonl")), ("s3", "s3://bench/input/urls.jsonl")):
            (tmp / f"{name}.yaml").write_text(yaml.safe_dump({**base, "input": {"path": path, "shard_size": args.shard_size}}))
        times = {}
        for rep in range(2):  # alternated, the first pair warming caches
            times.setdefault("local", []).append(run(tmp / "local.yaml", str(tmp / f"local-{rep}"), env))
            counter.kinds.clear()
            counter.where.clear()
            times.setdefault("s3", []).append(run(tmp / "s3.yaml", f"s3://bench/runs/r{rep}", env))
            first, where = Counter(counter.kinds), Counter(counter.where)
        counter.kinds.clear()
        resume_s = run(tmp / "s3.yaml", "s3://bench/runs/r1", env)
        resume = Counter(counter.kinds)
    server.stop()

    local, remote = min(times["local"]), min(times["s3"])
    print(f"{args.rows} rows, {shards} shards of {args.shard_size}; stages download, features, dedup; exports webdataset, parquet")
    print(f"wall: local {local:.1f} s, s3 {remote:.1f} s: {remote / local:.2f}x (best of 2 each); no-op resume on s3 {resume_s:.1f} s")
    for label, kinds in (("first run", first), ("no-op resume", resume)):
        total = sum(kinds.values())
        per = ", ".join(f"{k} {v} ({v / shards:.1f}/shard)" for k, v in sorted(kinds.items()))
        print(f"{label}: {total} requests ({total / shards:.1f} per shard): {per}")
    for (kind, key), n in where.most_common(args.top):
        print(f"  {n:6d} {kind:6s} {key}")
    big = 1_280_000_000 / 1000  # DataComp large at 1,000 rows per shard
    writes = sum(first[k] for k in ("PUT", "POST", "LIST", "DELETE")) / shards * big
    reads = sum(first[k] for k in ("GET", "HEAD")) / shards * big
    cost = writes / 1000 * PRICE["PUT/POST/LIST"] + reads / 1000 * PRICE["GET/HEAD"]
    print(f"DataComp large (1.28B rows, {big:,.0f} shards, this pipeline): about {writes / 1e6:.0f}M PUT/LIST and "
          f"{reads / 1e6:.0f}M GET/HEAD requests, about ${cost:,.0f} at S3 Standard list prices")


if __name__ == "__main__":
    main()
