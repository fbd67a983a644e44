"""Rows/s of each safety and privacy detector on CPU, on the same 1,000 rows, one run, one table.

Rows: the Faker PII corpus's captions (half with PII) paired with scikit-image photos and
generated pictures at the download stage's default size (256 px). Each detector runs alone,
in one process, on all 1,000 rows; its model is loaded before the clock starts.

The CLIP-head NSFW filter (`safety.nsfw.model: clip_head`) reads no image: it is timed on
`--head-rows` stored ViT-L/14-sized embeddings (768-d, float16, unit rows, as `clip_embed` writes
them) through the filter's own `apply` (Arrow column in, verdicts out), a shard of 1,000 rows at a
time (best of 3), with a head of the published NSFW detectors' shape (768 -> 64 -> 512 -> 256
-> 1, ReLU; random weights), and compared with NudeNet's rows/s from the same run.

    python bench/safety.py [--rows 1000] [--head-rows 200000]
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

SHARD = 1000  # input.shard_size's default: the clip_head filter applies once per shard


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


def head_filter(folder: Path):
    """The NSFW filter with a NeMo/LAION-shaped head (random weights), ready to apply."""
    import torch
    from safetensors.torch import save_file

    from mmcurate.filters.nsfw import NsfwFilter
    from mmcurate.schemas.config import config_from_dict

    torch.manual_seed(0)
    dims, state = (768, 64, 512, 256, 1), {}
    for i in range(4):
        layer = torch.nn.Linear(dims[i], dims[i + 1])
        state[f"{2 * i}.weight"], state[f"{2 * i}.bias"] = layer.weight.detach(), layer.bias.detach()
    save_file(state, str(folder / "nsfw_head.safetensors"))
    section = {"model": "clip_head", "weights": str(folder / "nsfw_head.safetensors")}
    config = config_from_dict({"input": {"path": "x"}, "clip": {"model": "ViT-L-14", "pretrained": "openai"},
                               "safety": {"nsfw": section}})
    nsfw = NsfwFilter(config)
    nsfw.prepare()
    nsfw.setup()
    return nsfw


def stored_embeddings(n: int, dim: int = 768):
    """`n` unit embeddings as clip_embed stores them: fixed_size_list<float16, dim>."""
    import pyarrow as pa

    from mmcurate.schemas import columns as C

    emb = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    values = pa.array(emb.astype(np.float16).reshape(-1))
    return pa.table({C.CLIP_EMBEDDING: pa.FixedSizeListArray.from_arrays(values, dim)})


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--head-rows", type=int, default=200_000, help="stored embeddings the CLIP head scores")
    args = parser.parse_args()
    os.environ.setdefault("MMCURATE_CACHE", tempfile.mkdtemp())
    from mmcurate.filters import faces, pii, toxicity
    from mmcurate.filters.images import decode_rgb
    from mmcurate.filters.nsfw import NsfwDetector
    from tests.filters.pii_corpus import corpus
    from tests.filters.test_toxicity import build_tiny_detoxify

    captions = [text for text, _ in corpus(n_pii=args.rows // 2, n_clean=args.rows - args.rows // 2)]
    pics = images(args.rows)
    results = []  # (detector, rows, seconds)

    scorer = toxicity.ToxicityScorer(toxicity.resolve("profanity-check", None, None))
    results.append(("toxicity: alt-profanity-check (linear SVM)", args.rows, timed(scorer.score, captions)))
    folder = Path(tempfile.mkdtemp()) / "tiny-bert"
    ckpt = build_tiny_detoxify(folder, str(folder))
    scorer = toxicity.ToxicityScorer(toxicity.resolve("original", str(ckpt), str(folder)), "cpu", 64)
    results.append(("toxicity: detoxify, tiny 1-layer BERT (test model)", args.rows, timed(scorer.score, captions)))

    nsfw = NsfwDetector(batch_size=16)
    nudenet = args.rows / timed(nsfw.score, pics)
    results.append(("nsfw: NudeNet 320n, onnxruntime, batch 16", args.rows, args.rows / nudenet))
    head, table = head_filter(Path(tempfile.mkdtemp())), stored_embeddings(args.head_rows)
    head.apply(table.slice(0, SHARD))  # warm up torch
    shards = [table.slice(i, SHARD) for i in range(0, args.head_rows, SHARD)]  # one apply per shard, as the stage
    seconds = min(timed(lambda: [head.apply(x) for x in shards]) for _ in range(3))
    results.append(("nsfw: clip_head MLP on stored embeddings, per shard", args.head_rows, seconds))

    decoded = [decode_rgb(p) for p in pics]
    for kind in ("centerface", "haar"):
        detector = faces.FaceDetector(*faces.resolve(kind, None))
        results.append((f"faces: {kind} (detect only, decoded)", args.rows,
                        timed(lambda: [detector.detect(x) for x in decoded])))
    detector = faces.FaceDetector(*faces.resolve("centerface", None))
    found = [detector.detect(x) for x in decoded]
    with_faces = [(x, f) for x, f in zip(decoded, found) if f]
    seconds = timed(lambda: [faces.blur(x, f) for x, f in with_faces])
    results.append((f"faces: blur ({len(with_faces)} images with faces)", max(len(with_faces), 1), seconds))

    results.append(("pii: find + redact", args.rows, timed(lambda: [pii.redact(c, pii.find(c)) for c in captions])))

    print(f"{args.rows} rows ({args.head_rows:,} embeddings for clip_head), CPU, {os.cpu_count()} cores\n")
    print(f"| {'detector':<52} | {'rows/s':>11} |")
    print(f"|{'-' * 54}|{'-' * 13}|")
    for name, rows, seconds in results:
        print(f"| {name:<52} | {rows / seconds:>11,.0f} |")
    head_rate = next(rows / seconds for name, rows, seconds in results if "clip_head" in name)
    print(f"\nnsfw: clip_head / NudeNet = {head_rate / nudenet:,.0f}x (same run; the head reads the embedding "
          "clip_embed computes anyway)")


if __name__ == "__main__":
    main()
