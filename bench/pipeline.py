"""The whole default pipeline vs the sum of its stages run alone, and the driver's peak memory.

1. A loopback server holds `--rows` distinct pictures (coloured shapes, 96 px PNG). The default
   pipeline runs on them as users run it, offline: the demo's stand-in CLIP in place of
   ViT-B-32, profanity-check in place of detoxify's download; NSFW (where the nsfw extra is
   installed), faces and PII as shipped. Rows/s per stage come from the manifest.
2. Each stage alone: its outputs are deleted from the finished run dir and the run repeated, so
   that exactly that stage runs again (on the same input, with everything else done); the
   manifest times it. The ratio whole / sum(alone) shows what running the stages together costs
   (goal <= 1.3x).
3. Driver peak RSS (the kernel's VmHWM) for the same default pipeline at `--rss-rows` and 10x that:
   global stages (dedup, CLIP's threshold) decide in a worker task, so it should stay flat.

    python bench/pipeline.py [--rows 10000] [--rss-rows 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(config: Path, run_dir: Path, *extra: str) -> tuple[float, int]:
    """Run the CLI; return (seconds, the driver's peak RSS in bytes, from /proc: Linux)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mmcurate", "run", str(config), "--run-dir", str(run_dir),
                             "--quiet", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = max(peak, int(status.split("VmHWM:")[1].split()[0]) * 1024)  # the kernel's own peak
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.1)
    err = proc.stderr.read()
    if proc.returncode:
        raise SystemExit(f"run failed: {err[-2000:]}")
    return time.perf_counter() - start, peak


def ray_start_seconds() -> float:
    """What starting an embedded Ray costs here: every "alone" run pays it inside its stage's time."""
    code = ("import time, ray; t = time.perf_counter(); ray.init(address='local', include_dashboard=False); "
            "ray.get(ray.remote(lambda: 1).remote()); print(time.perf_counter() - t); ray.shutdown()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def serve(rows: int):
    from mmcurate.demo import shapes
    from mmcurate.demo.server import ImageServer, Route

    pairs = shapes.pairs(rows, seed=3, size=96)
    server = ImageServer({f"/s/{i}.png": Route(shapes.png(p.image), content_type="image/png")
                          for i, p in enumerate(pairs)})
    lines = [{"url": server.url(f"/s/{i}.png"), "caption": p.caption} for i, p in enumerate(pairs)]
    return server, lines


def write_input(folder: Path, lines: list[dict]) -> Path:
    path = folder / "in.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rss-rows", type=int, default=2_000)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--skip-alone", action="store_true")
    args = parser.parse_args()
    from mmcurate.demo import shapes

    tmp = Path(tempfile.mkdtemp(prefix="mmcurate-bench-"))
    clip_dir, card = shapes.ensure_model()
    try:
        import nudenet  # noqa: F401

        nsfw = True
    except ImportError:
        nsfw = False

    def default_pipeline(path: Path) -> dict:
        return {
            "input": {"path": str(path), "shard_size": args.shard_size},
            "download": {"allow_networks": ["127.0.0.1/32"], "retries": 0},
            "clip": {"model": f"local-dir:{clip_dir}", "min_score": card["threshold"], "batch_size": 128},
            "safety": {"toxicity": {"model": "profanity-check"}, "nsfw": {"enabled": nsfw}},
            "export": {"formats": ["webdataset", "parquet"]},
        }
    server, lines = serve(args.rows)
    with server:
        (tmp / "c.yaml").write_text(yaml.safe_dump(default_pipeline(write_input(tmp, lines))))
        whole_dir = tmp / "whole"
        whole_s, whole_rss = run(tmp / "c.yaml", whole_dir)
        manifest = json.loads((whole_dir / "manifest.json").read_text())
        stages = [s for s in manifest["stage_order"] if s != "ingest" and not s.startswith("export-")]
        table = []
        for name in stages:
            info = manifest["stages"][name]
            alone = None
            if not args.skip_alone:
                shutil.rmtree(whole_dir / "stages" / name)
                run(tmp / "c.yaml", whole_dir)
                alone = json.loads((whole_dir / "manifest.json").read_text())["stages"][name]["seconds_this_run"]
            table.append((name, info["rows_in"], info["seconds_this_run"], alone))
    in_stages = sum(t[2] for t in table)
    alone_sum = sum(t[3] for t in table) if not args.skip_alone else None
    ray_start = ray_start_seconds()

    rss = {}
    for scale in (1, 10):
        server, lines = serve(args.rss_rows * scale)
        with server:
            folder = tmp / f"rss-{scale}"
            folder.mkdir()
            (folder / "c.yaml").write_text(yaml.safe_dump(default_pipeline(write_input(folder, lines))))
            seconds, peak = run(folder / "c.yaml", folder / "run")
            rss[scale] = (args.rss_rows * scale, seconds, peak)

    print(f"{args.rows:,} rows from a loopback server, {os.cpu_count()} cores, one run\n")
    print("| stage | rows in | s in the whole run | rows/s | s alone |")
    print("|---|---|---|---|---|")
    for name, rows_in, seconds, alone in table:
        rate = f"{rows_in / seconds:,.0f}" if seconds else "-"
        print(f"| {name} | {rows_in:,} | {seconds:.1f} | {rate} | {alone if alone is None else f'{alone:.1f}'} |")
    print(f"\nwhole run, wall clock (Ray start, ingest, stages, ledger, exports, report): {whole_s:.1f} s "
          f"= {args.rows / whole_s:,.1f} rows/s; stages inside it: {in_stages:.1f} s")
    if alone_sum:
        print(f"sum of the stages run alone: {alone_sum:.1f} s; whole run / sum alone = {whole_s / alone_sum:.2f}x "
              f"(stages only: {in_stages / alone_sum:.2f}x)")
        net = alone_sum - ray_start * len(table)
        print(f"each alone run starts Ray ({ray_start:.1f} s here); without that: sum alone {net:.1f} s, "
              f"whole run / sum alone = {whole_s / net:.2f}x (stages only: {in_stages / net:.2f}x)")
    print(f"driver peak RSS, whole pipeline: {whole_rss / 2**20:,.0f} MiB")
    for scale, (rows, seconds, peak) in rss.items():
        print(f"driver peak RSS, whole pipeline, {rows:,} rows ({scale}x): {peak / 2**20:,.0f} MiB ({seconds:.0f} s)")
    if len(rss) == 2:
        print(f"driver peak RSS 10x / 1x: {rss[10][2] / rss[1][2]:.2f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
