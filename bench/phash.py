"""Benchmark: pHash from the same stored JPEG bytes: decode + imagehash.phash vs mmcurate's fast
and exact paths (which also compute sha256, dHash and the colour grid from the same decode).

    python bench/phash.py [--images 1500]

The stored bytes are made as the download stage makes them: crops of real photographs through
img2dataset's resizer (256 px, keep_ratio, JPEG q95). One process, one core, one run.
"""

from __future__ import annotations

import argparse
import io
import os
import time

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def stored_jpegs(count: int) -> list[bytes]:
    from img2dataset.resizer import Resizer

    from mmcurate.demo import load_photos, random_crop

    resizer = Resizer(image_size=256, resize_mode="keep_ratio", resize_only_if_bigger=False)
    rng = np.random.default_rng(0)
    photos = load_photos()
    out = []
    for i in range(count):
        crop = random_crop(photos[i % len(photos)], rng, 0.5)
        buf = io.BytesIO()
        crop.resize((crop.width * 2, crop.height * 2)).save(buf, "PNG")
        data, *_ , err = resizer(io.BytesIO(buf.getvalue()))
        assert err is None, err
        out.append(data)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1500)
    args = parser.parse_args()
    import imagehash
    from PIL import Image

    from mmcurate.filters.image_hash import hex_to_uint64, signals

    data = stored_jpegs(args.images)
    sizes = [Image.open(io.BytesIO(b)).size for b in data[:200]]
    timings, hashes = {}, {}
    for label, fn in (
        ("decode + imagehash.phash", lambda b: str(imagehash.phash(Image.open(io.BytesIO(b))))),
        ("mmcurate fast", lambda b: signals(b, exact=False).phash),
        ("mmcurate exact", lambda b: signals(b, exact=True).phash),
    ):
        fn(data[0])
        start = time.perf_counter()
        hashes[label] = [fn(b) for b in data]
        timings[label] = time.perf_counter() - start
    base = timings["decode + imagehash.phash"]
    ref = hex_to_uint64(hashes["decode + imagehash.phash"])
    print(f"{args.images} stored JPEGs, e.g. {sizes[0][0]}x{sizes[0][1]}, mean {np.mean([w * h for w, h in sizes]):,.0f} px; one core")
    for label, seconds in timings.items():
        dist = np.bitwise_count(hex_to_uint64(hashes[label]) ^ ref)
        print(f"{label:26s} {args.images / seconds:8.1f} images/s  {base / seconds:5.2f}x   "
              f"equal to imagehash {np.mean(dist == 0):.3f}, within 2 bits {np.mean(dist <= 2):.3f}, mean {dist.mean():.2f} bits")


if __name__ == "__main__":
    main()
