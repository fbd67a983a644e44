"""Benchmark: mmcurate's download stage vs plain img2dataset, same loopback URLs, same processes
and threads, in one run. Prints both rates and their ratio (goal: mmcurate >= 0.9x img2dataset on
the default small sources, >= 1.5x on web-sized ones, `--source-px 1024`).

    python bench/download.py [--urls 2000] [--threads 32] [--processes 2] [--source-px 1024]

With `--source-px N` the server sends N-px photos (skimage's sample photos, cropped, upscaled and
grained per URL), and the bench also prints how far mmcurate's reduced-scale decode lands from a
full decode (img2dataset's resizer on the same bytes): mean absolute difference and PSNR of the
decoded outputs.

The image server runs in a child process so neither side shares its GIL. Ray is started
before timing (as on a cluster that is already up); img2dataset's process start is timed, as
its users pay it on every call.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _image(i: int) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (384, 288), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256))
    draw = ImageDraw.Draw(img)
    for k in range(6):
        x = (i * 13 + k * 47) % 300
        draw.ellipse((x, k * 30, x + 80, k * 30 + 60), fill=((k * 40) % 256, (i * 7) % 256, 120))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _photo(i: int, px: int) -> bytes:
    """A px x 3/4 px JPEG photo: one of skimage's sample photos, cropped by i, upscaled, grained."""
    import cv2
    import numpy as np
    from skimage import data

    base = [data.astronaut, data.coffee, data.chelsea, data.rocket, data.immunohistochemistry][i % 5]()
    h, w = base.shape[:2]
    rng = np.random.default_rng(i)
    ch, cw = int(h * rng.uniform(0.6, 0.9)), int(w * rng.uniform(0.6, 0.9))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    size = (px, px * 3 // 4) if i % 3 else (px * 3 // 4, px)  # a third of them portrait
    img = cv2.resize(np.ascontiguousarray(base[y:y + ch, x:x + cw, ::-1]), size, interpolation=cv2.INTER_CUBIC)
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)  # sensor grain: real detail
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _bodies(n: int, source_px: int | None) -> list[bytes]:
    if not source_px:
        return [_image(i) for i in range(n)]
    distinct = [_photo(i, source_px) for i in range(min(n, 100))]  # served in turn: both sides decode each
    return [distinct[i % len(distinct)] for i in range(n)]


def difference(bodies: list[bytes], args) -> tuple[float, float]:
    """Mean absolute difference and PSNR (dB) of mmcurate's outputs against a full decode's."""
    import cv2
    import numpy as np
    from img2dataset.resizer import Resizer

    from mmcurate.schemas.config import config_from_dict
    from mmcurate.stages.download import ImageCheck

    d = config_from_dict({"input": {"path": "x"}, "download": {
        "image_size": args.image_size, "resize_mode": "keep_ratio"}}).download
    check = ImageCheck(d)
    full = Resizer(image_size=d.image_size, resize_mode=d.resize_mode, resize_only_if_bigger=False,
                   encode_format=d.encode_format, encode_quality=d.encode_quality, max_image_area=d.max_image_pixels)
    errors = []
    for body in bodies[:100]:
        ours = cv2.imdecode(np.frombuffer(check(body).image, np.uint8), cv2.IMREAD_UNCHANGED)
        theirs = cv2.imdecode(np.frombuffer(full(io.BytesIO(body))[0], np.uint8), cv2.IMREAD_UNCHANGED)
        assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
        errors.append(np.abs(ours.astype(np.float64) - theirs).ravel())
    err = np.concatenate(errors)
    mse = float(np.mean(err ** 2))
    return float(err.mean()), (10 * np.log10(255 ** 2 / mse) if mse else float("inf"))


def _serve(n: int, source_px: int | None, port_queue: mp.Queue, stop: mp.Event) -> None:
    from mmcurate.demo.server import ImageServer, Route

    routes = {f"/img/{i}.jpg": Route(body) for i, body in enumerate(_bodies(n, source_px))}
    with ImageServer(routes) as server:
        port_queue.put(server.port)
        stop.wait()


def run_img2dataset(urls: Path, out: Path, args) -> float:
    from img2dataset import download

    start = time.perf_counter()
    download(
        url_list=str(urls), input_format="parquet", url_col="url", caption_col="caption",
        output_format="parquet", output_folder=str(out), processes_count=args.processes,
        thread_count=args.threads, image_size=args.image_size, resize_mode="keep_ratio",
        number_sample_per_shard=args.shard_size, timeout=10, retries=0, enable_wandb=False,
        extract_exif=False, compute_hash=None,
    )
    return time.perf_counter() - start


def run_mmcurate(urls: Path, run_dir: Path, args) -> tuple[float, dict]:
    from mmcurate.jobs.run import Job
    from mmcurate.schemas.config import config_from_dict

    config = config_from_dict({
        "input": {"path": str(urls), "shard_size": args.shard_size},
        "download": {"allow_networks": ["127.0.0.1/32"], "threads": args.threads, "retries": 0,
                     "image_size": args.image_size, "resize_mode": "keep_ratio"},
        "dedup": {"exact": False, "phash": {"enabled": False}},
        "clip": {"enabled": False},
        # the download stage alone: safety's default detoxify model is a download (no hub here)
        "safety": {"toxicity": {"enabled": False}, "nsfw": {"enabled": False}},
        "privacy": {"faces": {"enabled": False}, "pii": {"enabled": False}},
        "export": {"formats": []},
    })
    start = time.perf_counter()
    result = Job(config, run_dir).run()
    return time.perf_counter() - start, result.stages["download"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--source-px", type=int, default=None,
                        help="serve photos this many px on the long side (default: 384x288 drawings)")
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from mmcurate.engine import executor

    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(args.urls, args.source_px, ports, stop), daemon=True)
    server.start()
    port = ports.get(timeout=300)
    tmp = Path(tempfile.mkdtemp(prefix="mmcurate-bench-"))
    try:
        urls = tmp / "urls.parquet"
        pq.write_table(pa.table({
            "url": [f"http://127.0.0.1:{port}/img/{i}.jpg" for i in range(args.urls)],
            "caption": [f"image {i}" for i in range(args.urls)],
        }), urls)
        ray.init(num_cpus=args.processes, include_dashboard=False, logging_level="ERROR")
        executor.start()  # configures Ray Data logging; leaves this Ray running
        i2d_s = run_img2dataset(urls, tmp / "i2d", args)
        i2d_ok = sum(
            json.loads(p.read_text())["successes"] for p in (tmp / "i2d").glob("*_stats.json")
        )
        mm_s, stage = run_mmcurate(urls, tmp / "mm", args)
        ray.shutdown()
    finally:
        stop.set()
        server.join(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)

    i2d_rate = args.urls / i2d_s
    mm_rate = args.urls / mm_s
    source = f"{args.source_px}-px photos" if args.source_px else "384x288 drawings"
    print(f"urls={args.urls} processes={args.processes} threads={args.threads} image_size={args.image_size} "
          f"sources={source}")
    print(f"img2dataset         : {i2d_s:7.2f} s  {i2d_rate:8.1f} rows/s  ({i2d_ok} ok)")
    print(f"mmcurate (whole run): {mm_s:7.2f} s  {mm_rate:8.1f} rows/s  ({stage['kept']} ok; ingest+download+ledger+report)")
    print(f"mmcurate download stage alone: {stage['seconds_this_run']:.2f} s  {stage['rows_per_s_this_run']:.1f} rows/s")
    goal = "1.5x" if args.source_px and args.source_px >= 2 * args.image_size else "0.9x"
    print(f"ratio mmcurate / img2dataset: {mm_rate / i2d_rate:.2f}x (goal >= {goal})")
    mad, psnr = difference(_bodies(min(args.urls, 100), args.source_px), args)
    print(f"outputs vs a full decode: mean |difference| {mad:.3f} / 255, PSNR {psnr:.1f} dB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
