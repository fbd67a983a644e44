"""Benchmark: near-duplicate grouping of 1,000,000 random 64-bit pHashes with 5 % planted
near-copies at max_distance 6 (pHash only), on this machine; plus brute-force agreement of the
pair search on a 20,000 sample.

    python bench/dedup.py [--n 1000000] [--k 6] [--ray] [--decide-rows 1000000]

--ray spreads the band passes over Ray workers (as `mmcurate run` does); without it they run
in this process. --decide-rows also measures the whole stage's `decide` (exact + near + the
output table) on that many rows stored as the features stage stores them, in a fresh process:
the memory it needs beyond its input table, per row (what the worker that runs dedup needs).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def planted(n: int, k: int, frac: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    m = int(n * frac)
    targets = rng.choice(n, size=m, replace=False)
    sources = rng.integers(0, n, size=m)
    flips = rng.integers(0, k + 1, size=m)
    for t, s, f in zip(targets, sources, flips):
        mask = np.uint64(0)
        for bit in rng.choice(64, size=f, replace=False):
            mask |= np.uint64(1) << np.uint64(int(bit))
        hashes[t] = hashes[s] ^ mask
    return hashes


DECIDE = """
import sys, time
import numpy as np, pyarrow as pa
from mmcurate.stages.dedup.stage import DedupStage
from mmcurate.stages.base import serial
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
sys.path.insert(0, "bench")
from dedup import planted

def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024

n, path, step = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import pyarrow.parquet as pq
if step == "measure":  # read (Arrow memory only), then measure decide's peak beyond it
    t = pq.read_table(path)
    import gc; gc.collect()
    base = rss()
    with open("/proc/self/clear_refs", "w") as f:  # reset the kernel's peak (VmHWM) to now
        f.write("5")
    stage = DedupStage(config_from_dict({"input": {"path": "x"}, "dedup": {"phash": {"max_distance": 6}}}))
    start = time.perf_counter()
    out = stage.decide(t, serial)
    seconds = time.perf_counter() - start
    extra = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024 - base
    print(t.nbytes, extra, seconds, out[C.REASON].null_count)
    sys.exit()
rng = np.random.default_rng(0)
ph = planted(n, 6, 0.05)
dh = ph ^ np.uint64(1)
t = pa.table({C.UID: [f"{i:016x}" for i in rng.integers(0, 2**62, n)], C.ROW: np.arange(n),
              C.SHA256: [f"{x:064x}" for x in rng.integers(0, n, n)],
              C.PHASH: [f"{x:016x}" for x in ph], C.DHASH: [f"{x:016x}" for x in dh],
              C.LUMA_STD: np.full(n, 50.0, np.float32),
              C.COLOUR: pa.array([bytes(48)] * n, pa.binary()),
              C.ORIGINAL_WIDTH: rng.integers(64, 2048, n).astype(np.int32),
              C.ORIGINAL_HEIGHT: rng.integers(64, 2048, n).astype(np.int32)})
pq.write_table(t, path)
"""


def decide_memory(rows: int) -> None:
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "rows.parquet")
        subprocess.run([sys.executable, "-c", DECIDE, str(rows), path, "build"], cwd=root, check=True)
        out = subprocess.run([sys.executable, "-c", DECIDE, str(rows), path, "measure"], capture_output=True,
                             text=True, cwd=root, check=True)
    table, extra, seconds, kept = out.stdout.split()
    print(f"DedupStage.decide on {rows:,} rows ({rows - int(kept):,} dropped) in {float(seconds):.1f} s: input table "
          f"{int(table) / rows:.0f} B/row; peak memory beyond it {int(extra) / 2**20:,.0f} MiB = {int(extra) / rows:.0f} B/row")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--ray", action="store_true")
    parser.add_argument("--decide-rows", type=int, default=0)
    args = parser.parse_args()
    if args.decide_rows:
        decide_memory(args.decide_rows)

    from mmcurate.algos import hamming
    from mmcurate.stages.base import serial
    from mmcurate.stages.dedup.signals import Signals, near_duplicates

    hashes = planted(args.n, args.k, 0.05)
    parallel = serial
    if args.ray:
        from mmcurate.engine import executor

        executor.start()
        parallel = executor.map_tasks
    sig = Signals(hashes, hashes, np.full(args.n, 50.0, np.float32), np.zeros((args.n, 48), np.uint8))
    rank = np.arange(args.n)
    start = time.perf_counter()
    keeper_of, _ = near_duplicates(sig, rank, np.ones(args.n, bool), args.k, None, parallel)
    seconds = time.perf_counter() - start
    plan = hamming.plan(args.n, args.k)
    print(f"{args.n:,} hashes, 5 % planted near-copies, max_distance {args.k}: grouped in {seconds:.1f} s "
          f"({'Ray workers' if args.ray else 'one process'}; {len(plan.widths)} bands, {len(plan.combos)} passes); "
          f"{int((keeper_of >= 0).sum()):,} rows dropped as near-duplicates (goal <= 30 s)")

    sample = planted(20_000, args.k, 0.05, seed=1)
    found = {tuple(p) for p in hamming.find_pairs(sample, args.k)[:, :2].tolist()}
    truth = {tuple(p) for p in hamming.brute_force_pairs(sample, args.k)[:, :2].tolist()}
    print(f"20,000-hash sample: banded search {len(found)} pairs, brute force {len(truth)} pairs, "
          f"identical: {found == truth}")


if __name__ == "__main__":
    main()
