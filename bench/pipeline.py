"""The whole pipeline vs each of its stages run alone; the streaming engine vs the barrier engine;
the driver's and the object store's peak memory.

1. A loopback server holds `--rows` distinct pictures (coloured shapes, 96 px PNG). The pipeline
   runs on them as users run it, offline: the demo's stand-in CLIP in place of ViT-B-32,
   profanity-check in place of detoxify's download; NSFW (where the nsfw extra is installed),
   faces and PII as shipped.
2. Each stage alone: its outputs are deleted from the finished run dir and the run repeated, so
   that exactly that stage runs again (on the same input, with everything else done).
3. The same pipeline with `engine.streaming: false` (every stage a barrier, the engine before
   streaming), in another run dir: its time, and whether its ledger and exports are byte-identical.
4. Driver peak RSS (the kernel's VmHWM) and the object store's peak (the raylet's shared memory)
   at `--rss-rows` and 10x that: they should stay flat.

Times are the span of the stages' shards (the first shard's `started` to the last one's
`finished`, from the shard stats), so Ray's start and the exports count in no figure but the
wall clock.

`--latency-ms 300` makes the server answer every request that late, as web hosts do, and runs
downloads with `--threads` threads (few), so that download alone and the CPU stages alone take
about the same time. Dedup is a barrier (it must see every shard), so here it is off unless
`--dedup`: then nothing separates download from the detectors and they can overlap.

    python bench/pipeline.py [--rows 10000] [--rss-rows 2000]
    python bench/pipeline.py --latency-ms 300 --rows 1000 [--threads 4] [--dedup]
    python bench/pipeline.py --before REV [--rows 2000]   # the same pipeline under an older mmcurate
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.jobs.test_resume import descendants, digests  # noqa: E402  the same checks the tests make


class StoreWatch(threading.Thread):
    """The object store's peak for the Ray cluster the process `pid` started: the shared memory
    its raylet (where the plasma store lives) has touched, from /proc (RssShmem). Pages once
    touched stay counted, so this is the high-water mark of the store's use, not the current use."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.halt, self.polls = pid, 0, threading.Event(), 0

    def raylet(self) -> int | None:
        for child in descendants(self.pid):
            try:
                if Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0].endswith(b"/raylet"):
                    return child
            except OSError:
                continue
        return None

    def run(self) -> None:
        raylet = None
        while not self.halt.wait(0.2):
            try:
                raylet = raylet or self.raylet()
                if raylet:
                    status = Path(f"/proc/{raylet}/status").read_text()
                    self.peak = max(self.peak, int(status.split("RssShmem:")[1].split()[0]) * 1024)
                    self.polls += 1
            except (OSError, IndexError, ValueError):  # the cluster is going
                raylet = None


def run(config: Path, run_dir: Path, *extra: str, tree: Path | None = None) -> tuple[float, int, int]:
    """Run the CLI (mmcurate as `tree`, a checkout, has it, if given); return (seconds, the driver's
    peak RSS, the object store's peak, in bytes)."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree else None
    proc = subprocess.Popen([sys.executable, "-m", "mmcurate", "run", str(config), "--run-dir", str(run_dir),
                             "--quiet", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tree)
    watch = StoreWatch(proc.pid)
    watch.start()
    peak = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = max(peak, int(status.split("VmHWM:")[1].split()[0]) * 1024)  # the kernel's own peak
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.1)
    watch.halt.set()
    watch.join()
    err = proc.stderr.read()
    if proc.returncode:
        raise SystemExit(f"run failed: {err[-2000:]}")
    return time.perf_counter() - start, peak, watch.peak if watch.polls else -1


def span(run_dir: Path, stages: list[str]) -> float:
    """Seconds from the first shard any of `stages` began to the last one it finished."""
    stats = [json.loads(p.read_text()) for s in stages for p in (run_dir / "stages" / s).glob("*.stats.json")]
    return (max(datetime.fromisoformat(s["finished"]) for s in stats)
            - min(datetime.fromisoformat(s["started"]) for s in stats)).total_seconds()


def serve(rows: int, delay_s: float = 0.0):
    from mmcurate.demo import shapes
    from mmcurate.demo.server import ImageServer, Route

    pairs = shapes.pairs(rows, seed=3, size=96)
    server = ImageServer({f"/s/{i}.png": Route(shapes.png(p.image), content_type="image/png")
                          for i, p in enumerate(pairs)}, delay_s=delay_s)
    lines = [{"url": server.url(f"/s/{i}.png"), "caption": p.caption} for i, p in enumerate(pairs)]
    return server, lines


def write_input(folder: Path, lines: list[dict]) -> Path:
    path = folder / "in.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def mib(n: int) -> str:
    if n < 0:
        return "not measured (no raylet found)"
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 2**10:,.1f} KiB"


def before_and_after(args, tmp: Path) -> None:
    """The pipeline of `tmp/c.yaml` under mmcurate at `args.before` (a git worktree of it), then
    as it is here; each stage's span and the whole run's, and the ratios."""
    root = Path(__file__).resolve().parents[1]
    tree = tmp / "before"
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "-q", str(tree), args.before], check=True)
    try:
        runs = {}
        for label, where in (("before", tree), ("after", None)):
            run_dir = tmp / label
            seconds, _, _ = run(tmp / "c.yaml", run_dir, tree=where)
            manifest = json.loads((run_dir / "manifest.json").read_text())
            stages = [s for s in manifest["stage_order"] if s != "ingest" and not s.startswith("export-")]
            runs[label] = (seconds, span(run_dir, stages), {s: span(run_dir, [s]) for s in stages},
                           {s: manifest["stages"][s]["rows_in"] for s in stages})
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)], check=False)
    (b_wall, b_span, b_stages, _), (a_wall, a_span, a_stages, rows_in) = runs["before"], runs["after"]
    print(f"{args.rows:,} rows from a loopback server, {args.shard_size}-row shards, {os.cpu_count()} cores; "
          f"mmcurate at {args.before} (before) and as checked out (after), one run each\n")
    print("| stage | rows in | s before | s after | before / after |")
    print("|---|---|---|---|---|")
    for name, after in a_stages.items():
        before = b_stages.get(name)
        ratio = f"{before / after:.2f}x" if before and after else "-"
        print(f"| {name} | {rows_in[name]:,} | {'-' if before is None else f'{before:.1f}'} | {after:.1f} | {ratio} |")
    print(f"\nstages of the whole run: before {b_span:.1f} s, after {a_span:.1f} s: **{b_span / a_span:.2f}x**; "
          f"wall clock with Ray's start, ingest, ledger, exports, report: {b_wall:.1f} s and {a_wall:.1f} s "
          f"({b_wall / a_wall:.2f}x). A stage's span overlaps its neighbours' where they stream.")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rss-rows", type=int, default=2_000)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="every response this late")
    parser.add_argument("--threads", type=int, default=4, help="download threads per task, with --latency-ms")
    parser.add_argument("--dedup", action="store_true", help="keep dedup on with --latency-ms (a barrier)")
    parser.add_argument("--skip-alone", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--before", metavar="REV", help="only this: the same pipeline, rows and machine under "
                        "mmcurate as it was at git revision REV, then as it is; both times and their ratio")
    args = parser.parse_args()
    from mmcurate.demo import shapes

    latency = args.latency_ms / 1000
    tmp = Path(tempfile.mkdtemp(prefix="mmcurate-bench-"))
    clip_dir, card = shapes.ensure_model()
    try:
        import nudenet  # noqa: F401

        nsfw = True
    except ImportError:
        nsfw = False

    def pipeline(path: Path) -> dict:
        config = {
            "input": {"path": str(path), "shard_size": args.shard_size},
            "download": {"allow_networks": ["127.0.0.1/32"], "retries": 0},
            "clip": {"model": f"local-dir:{clip_dir}", "min_score": card["threshold"], "batch_size": 128},
            "safety": {"toxicity": {"model": "profanity-check"}, "nsfw": {"enabled": nsfw}},
            "export": {"formats": ["webdataset", "parquet"]},
        }
        if latency:
            config["download"]["threads"] = args.threads
            if not args.dedup:
                config["dedup"] = {"exact": False, "phash": {"enabled": False}}
        return config

    server, lines = serve(args.rows, latency)
    if args.before:
        with server:
            (tmp / "c.yaml").write_text(yaml.safe_dump(pipeline(write_input(tmp, lines))))
            before_and_after(args, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    with server:
        (tmp / "c.yaml").write_text(yaml.safe_dump(pipeline(write_input(tmp, lines))))
        whole_dir, barrier_dir = tmp / "whole", tmp / "barrier"
        whole_s, whole_rss, whole_store = run(tmp / "c.yaml", whole_dir)
        manifest = json.loads((whole_dir / "manifest.json").read_text())
        stages = [s for s in manifest["stage_order"] if s != "ingest" and not s.startswith("export-")]
        whole_span = span(whole_dir, stages)
        barrier_s, _, _ = run(tmp / "c.yaml", barrier_dir, "--set", "engine.streaming=false")
        barrier_span = span(barrier_dir, stages)
        identical = digests(whole_dir) == digests(barrier_dir)
        table = []
        for name in stages:
            alone = None
            if not args.skip_alone:
                shutil.rmtree(whole_dir / "stages" / name)
                run(tmp / "c.yaml", whole_dir)
                alone = span(whole_dir, [name])
            table.append((name, manifest["stages"][name]["rows_in"], alone))

    rss = {}
    for scale in () if args.skip_rss else (1, 10):
        server, lines = serve(args.rss_rows * scale)
        with server:
            folder = tmp / f"rss-{scale}"
            folder.mkdir()
            (folder / "c.yaml").write_text(yaml.safe_dump(pipeline(write_input(folder, lines))))
            rss[scale] = (args.rss_rows * scale, *run(folder / "c.yaml", folder / "run"))

    how = f"every response {args.latency_ms:g} ms late, {args.threads} download threads a task" if latency else "no latency"
    print(f"{args.rows:,} rows from a loopback server ({how}), {args.shard_size}-row shards, {os.cpu_count()} cores\n")
    print("| stage | rows in | s alone | rows/s alone |")
    print("|---|---|---|---|")
    for name, rows_in, alone in table:
        rate = f"{rows_in / alone:,.0f}" if alone else "-"
        print(f"| {name} | {rows_in:,} | {'-' if alone is None else f'{alone:.1f}'} | {rate} |")
    print(f"\nstages of the whole run, streaming: {whole_span:.1f} s; barrier engine: {barrier_span:.1f} s "
          f"(wall clock with Ray's start, ingest, ledger, exports, report: {whole_s:.1f} s and {barrier_s:.1f} s)")
    print(f"output of the streaming run byte-identical to the barrier run's: {'yes' if identical else 'NO'}")
    if not args.skip_alone:
        total, slowest = sum(t[2] for t in table), max(t[2] for t in table)
        print(f"sum of the stages alone: {total:.1f} s, slowest alone: {slowest:.1f} s")
        print(f"streaming whole / sum(alone) = {whole_span / total:.2f}x, whole / max(alone) = {whole_span / slowest:.2f}x")
        print(f"barrier whole / sum(alone) = {barrier_span / total:.2f}x")
    print(f"\npeak, whole run: driver RSS {mib(whole_rss)}, object store {mib(whole_store)}")
    for scale, (rows, seconds, peak, store) in rss.items():
        print(f"peak, {rows:,} rows ({scale}x): driver RSS {mib(peak)}, object store {mib(store)} ({seconds:.0f} s)")
    if len(rss) == 2:
        print(f"10x / 1x: driver RSS {rss[10][2] / rss[1][2]:.2f}, object store {rss[10][3] / max(rss[1][3], 1):.2f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
