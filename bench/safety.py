"""Rows/s of each safety and privacy detector on CPU, on the same 1,000 rows, one run, one table.

Rows: the Faker PII corpus's captions (half with PII) paired with scikit-image photos and
generated pictures at the download stage's default size (256 px). Each detector runs alone,
in one process, on all 1,000 rows; its model is loaded before the clock starts.

    python bench/safety.py [--rows 1000]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def images(n: int) -> list[bytes]:
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "brick", "cat", "motorcycle_left"]
    photos = []
    for name in names:
        try:
            img = getattr(data, name)()
        except (AttributeError, ValueError):
            continue
        img = Image.fromarray(img if img.ndim == 3 else np.stack([img] * 3, -1)).convert("RGB")
        img.thumbnail((256, 256))
        photos.append(img)
    out = []
    for i in range(n):
        img = photos[i % len(photos)].rotate(i % 7, expand=False)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000)
    args = parser.parse_args()
    os.environ.setdefault("MMCURATE_CACHE", tempfile.mkdtemp())
    from mmcurate.filters import faces, pii, toxicity
    from mmcurate.filters.images import decode_rgb
    from mmcurate.filters.nsfw import NsfwDetector
    from tests.filters.pii_corpus import corpus
    from tests.filters.test_toxicity import build_tiny_detoxify

    captions = [text for text, _ in corpus(n_pii=args.rows // 2, n_clean=args.rows - args.rows // 2)]
    pics = images(args.rows)
    results = []

    scorer = toxicity.ToxicityScorer(toxicity.resolve("profanity-check", None, None))
    results.append(("toxicity: alt-profanity-check (linear SVM)", timed(scorer.score, captions)))
    folder = Path(tempfile.mkdtemp()) / "tiny-bert"
    ckpt = build_tiny_detoxify(folder, str(folder))
    scorer = toxicity.ToxicityScorer(toxicity.resolve("original", str(ckpt), str(folder)), "cpu", 64)
    results.append(("toxicity: detoxify, tiny 1-layer BERT (test model)", timed(scorer.score, captions)))

    nsfw = NsfwDetector(batch_size=16)
    results.append(("nsfw: NudeNet 320n, onnxruntime, batch 16", timed(nsfw.score, pics)))

    decoded = [decode_rgb(p) for p in pics]
    for kind in ("centerface", "haar"):
        detector = faces.FaceDetector(*faces.resolve(kind, None))
        results.append((f"faces: {kind} (detect only, decoded)", timed(lambda: [detector.detect(x) for x in decoded])))
    detector = faces.FaceDetector(*faces.resolve("centerface", None))
    found = [detector.detect(x) for x in decoded]
    with_faces = [(x, f) for x, f in zip(decoded, found) if f]
    seconds = timed(lambda: [faces.blur(x, f) for x, f in with_faces])
    results.append((f"faces: blur ({len(with_faces)} images with faces)", seconds * args.rows / max(len(with_faces), 1)))

    results.append(("pii: find + redact", timed(lambda: [pii.redact(c, pii.find(c)) for c in captions])))

    print(f"{args.rows} rows, CPU, {os.cpu_count()} cores\n")
    print(f"| {'detector':<52} | {'rows/s':>9} |")
    print(f"|{'-' * 54}|{'-' * 11}|")
    for name, seconds in results:
        print(f"| {name:<52} | {args.rows / seconds:>9,.0f} |")


if __name__ == "__main__":
    main()
