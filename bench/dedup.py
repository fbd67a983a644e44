"""Benchmark: near-duplicate grouping of 1,000,000 random 64-bit pHashes with 5 % planted
near-copies at max_distance 6 (pHash only), on this machine; plus brute-force agreement of the
pair search on a 20,000 sample.

    python bench/dedup.py [--n 1000000] [--k 6] [--ray]

--ray spreads the band passes over Ray workers (as `mmcurate run` does); without it they run
in this process.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--ray", action="store_true")
    args = parser.parse_args()

    from mmcurate.pipelines import hamming
    from mmcurate.pipelines.dedup import Signals, near_duplicates
    from mmcurate.pipelines.stage import serial

    hashes = planted(args.n, args.k, 0.05)
    parallel = serial
    if args.ray:
        from mmcurate.pipelines import executor

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
