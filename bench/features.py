"""Benchmark: the features stage's CPU per row against the download stage's, in one run, with the
signals handed on by download (decode once) and with the stage decoding every stored image (as
before, and as `dedup.phash.exact` still does). Goal: features <= 15 % of download per row.

    python bench/features.py [--urls 1000] [--source-px 1024] [--shard-size 250]

The stages run in this process, as a Ray worker runs them (`process` on one shard's rows), with
the CPU time of the process counted (download's threads included); the image server runs in a
child process, so its CPU is not counted. Sources are bench/download.py's photos.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from download import _serve  # noqa: E402 - bench/download.py's loopback server and photos


def cpu(fn, *args):
    start = time.process_time()
    out = fn(*args)
    return out, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=1000)
    parser.add_argument("--source-px", type=int, default=1024)
    parser.add_argument("--shard-size", type=int, default=250)
    args = parser.parse_args()
    import pyarrow as pa

    from mmcurate.filters.image_hash import hex_to_uint64
    from mmcurate.schemas import columns as C
    from mmcurate.schemas.config import config_from_dict
    from mmcurate.stages.download import DownloadStage
    from mmcurate.stages.features import HANDED_ON, FeaturesStage

    # img2dataset's resizer points fds 1 and 2 at /dev/null while it works; from many threads at
    # once it can leave them there: keep this process's own to print with
    out_fd, err_fd = os.dup(1), os.dup(2)
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(args.urls, args.source_px, ports, stop), daemon=True)
    server.start()
    port = ports.get(timeout=300)
    config = config_from_dict({"input": {"path": "x"}, "download": {"allow_networks": ["127.0.0.1/32"], "retries": 0}})
    plain = config.model_copy(update={"dedup": config.dedup.model_copy(update={"exact": False, "phash": config.dedup.phash.model_copy(update={"enabled": False})})})
    download, alone, features = DownloadStage(config), DownloadStage(plain), FeaturesStage(config)
    for stage in (download, alone, features):
        stage.setup()
    totals = {"download": 0.0, "download, no signals": 0.0, "features, handed on": 0.0, "features, decoding": 0.0}
    bits = []
    rows = 0
    try:
        for start in range(0, args.urls, args.shard_size):
            ids = list(range(start, min(args.urls, start + args.shard_size)))
            shard = pa.table({C.UID: [str(i) for i in ids], C.ROW: ids,
                              C.URL: [f"http://127.0.0.1:{port}/img/{i}.jpg" for i in ids],
                              C.CAPTION: [f"image {i}" for i in ids]})
            out, seconds = cpu(download.process, shard)
            totals["download"] += seconds
            totals["download, no signals"] += cpu(alone.process, shard)[1]  # what handing them on costs download
            alive = out.filter(pa.compute.equal(out[C.STATUS], C.KEPT)).select([C.UID, C.ROW, C.IMAGE, *HANDED_ON])
            rows += alive.num_rows
            handed, seconds = cpu(features.process, alive)
            totals["features, handed on"] += seconds
            decoded, seconds = cpu(features.process, alive.select([C.UID, C.ROW, C.IMAGE]))  # a shard from before
            totals["features, decoding"] += seconds
            a, b = (hex_to_uint64(t[C.PHASH].to_pylist()) for t in (handed, decoded))
            bits += [bin(int(x)).count("1") for x in a ^ b]
    finally:
        stop.set()
        server.join(timeout=10)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
    print(f"{args.urls} URLs of {args.source_px}-px photos, stored at 256 px; {rows} kept; CPU time of this process\n")
    print(f"| {'stage':<22} | {'ms CPU/row':>10} | {'of download':>11} |")
    print(f"|{'-' * 24}|{'-' * 12}|{'-' * 13}|")
    base = totals["download"] / rows
    for name in totals:
        per_row = totals[name] / rows
        print(f"| {name:<22} | {per_row * 1e3:>10.3f} | {per_row / base:>10.1%} |")
    extra = (totals["download"] - totals["download, no signals"]) / rows
    print(f"\ndecode once: features {totals['features, handed on'] / rows * 1e3:.3f} ms/row + download's signals "
          f"{extra * 1e3:.3f} ms/row, against {totals['features, decoding'] / rows * 1e3:.3f} ms/row decoding")
    print(f"pHash handed on vs decoded from the stored JPEG: equal for {bits.count(0)}/{rows} rows, "
          f"{sum(bits) / max(rows, 1):.2f} bits apart on average, at most {max(bits, default=0)}")


if __name__ == "__main__":
    main()
