"""Requests/s the synthesis stage achieves against a teacher of fixed capacity, vs that capacity.

The teacher double (tests/teacher_double.py on the demo's stand-in), in its own process as a
real server would be, serves at most `--capacity`
requests at once, each taking `--latency` seconds, so it can answer at most capacity / latency
requests/s. `--faults` of the requests fail once first (429 with Retry-After 0, 500 or 503,
in turn) and are retried. The stage runs in-process (one worker, as a run uses it) with
`max_concurrency` = capacity; the goal is >= 0.9x the capacity.

The nominal capacity assumes the server answers in exactly `latency`; a Python double on a
small machine cannot. So the same run also measures a baseline: a bare aiohttp loop (the same
concurrency, a tiny payload, no cache, no validation, retries at once) against the same double;
`ratio_to_baseline` is what the stage achieves of what the double can actually serve.

    python bench/synthesis.py [--samples 800] [--capacity 64] [--latency 0.05] [--faults 0.05]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.teacher_double import FaultyTeacher  # noqa: E402


class CapacityTeacher(FaultyTeacher):
    def __init__(self, capacity: int, latency_s: float, faults: float):
        super().__init__(latency_s=latency_s, capacity=capacity)
        self.faults = faults

    def fault(self, payload, attempt):
        if attempt:
            return None
        key = self.caption_of(payload) + self.task_of(payload)
        h = zlib.crc32(key.encode()) % 10_000
        if h >= self.faults * 10_000:
            return None
        kind = h % 3
        if kind == 0:
            return 429, {"Retry-After": "0"}, b'{"error": {"message": "slow down"}}'
        return (500 if kind == 1 else 503), {}, b'{"error": {"message": "try again"}}'


def serve(capacity: int, latency: float, faults: float, port, requests, stop) -> None:
    with CapacityTeacher(capacity, latency, faults) as teacher:
        port.value = int(teacher.endpoint.rsplit(":", 1)[1].split("/")[0])
        while not stop.is_set():
            requests.value = teacher.requests
            time.sleep(0.05)
        requests.value = teacher.requests


async def bare_client(endpoint: str, concurrency: int, count: int) -> tuple[int, float]:
    """Requests/s of the simplest client there is, against the same server."""
    import asyncio

    import aiohttp

    slots = asyncio.Semaphore(concurrency)
    sent = 0

    async def one(http, i):
        nonlocal sent
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": f"(for your orientation only): baseline {i}\nRespond with a JSON object"}]}]})
        while True:
            async with slots, http.post(endpoint + "/chat/completions", data=body) as response:
                await response.read()
                sent += 1
                if response.status == 200:
                    return

    connector = aiohttp.TCPConnector(limit=concurrency)
    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(one(http, i) for i in range(count)))
    return sent, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=800)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--faults", type=float, default=0.05)
    args = parser.parse_args()

    from mmcurate.demo import shapes
    from mmcurate.schemas import columns as C
    from mmcurate.schemas.config import config_from_dict
    from mmcurate.stages.base import ShardContext
    from mmcurate.stages.synthesis.stage import SynthesisStage

    pairs = shapes.pairs(args.samples, seed=1, size=64)
    rows = pa.table({
        C.UID: [f"u{i}" for i in range(args.samples)], C.ROW: list(range(args.samples)),
        C.URL: ["http://x"] * args.samples, C.CAPTION: [f"{p.caption} number {i}" for i, p in enumerate(pairs)],
        C.IMAGE: [shapes.png(p.image) for p in pairs], C.IMAGE_FORMAT: ["png"] * args.samples,
    })
    ceiling = args.capacity / args.latency
    import multiprocessing as mp

    port, count, stop = mp.Value("i", 0), mp.Value("q", 0), mp.Event()
    server = mp.Process(target=serve, args=(args.capacity, args.latency, args.faults, port, count, stop), daemon=True)
    server.start()
    while not port.value:
        time.sleep(0.05)
    import asyncio

    endpoint = f"http://127.0.0.1:{port.value}/v1"
    base_sent, base_seconds = asyncio.run(bare_client(endpoint, args.capacity, 3 * args.samples))
    with tempfile.TemporaryDirectory() as tmp:
        config = config_from_dict({"input": {"path": "x"}, "clip": {"enabled": False}, "synthesis": {
            "enabled": True, "endpoint": f"http://127.0.0.1:{port.value}/v1", "max_concurrency": args.capacity,
            "timeout_s": 10}})
        stage = SynthesisStage(config)
        stage.prepare()
        stage.context = ShardContext(0, Path(tmp) / "cache.jsonl")  # the response cache on disk, as in a run
        stage.setup()
        stage._client.backoff_s = 0.05  # the first retry of a 500/503 waits 25-50 ms, as a tuned client would
        start = time.perf_counter()
        stage.process(rows)
        seconds = time.perf_counter() - start
    stop.set()
    server.join()
    requests = count.value - base_sent
    ok = stage.context.side_tables["records"][C.STATUS].to_pylist().count("ok")
    achieved = requests / seconds
    print(json.dumps({
        "samples": args.samples, "tasks": 3, "requests": requests, "records_ok": ok, "seconds": round(seconds, 2),
        "capacity": args.capacity, "latency_s": args.latency, "fault_rate": args.faults,
        "capacity_requests_per_s": round(ceiling, 1), "achieved_requests_per_s": round(achieved, 1),
        "ratio": round(achieved / ceiling, 3),
        "baseline_requests_per_s": round(base_sent / base_seconds, 1),
        "ratio_to_baseline": round(achieved / (base_sent / base_seconds), 3),
    }, indent=2))


if __name__ == "__main__":
    main()
