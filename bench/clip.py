"""CLIP stage throughput: end to end from a shard file vs the towers alone on ready tensors.

End to end is what the `clip_embed` stage does per shard: read the shard's parquet, decode and
preprocess every image (in threads, one batch ahead), tokenise the captions and run both towers.
Forward-only runs the same model at the same batch size on tensors prepared beforehand. Both in
one run, same process, so the ratio is meaningful on a noisy machine; on a GPU the goal is end
to end >= 0.7x forward-only (the towers, not decoding, set the pace).

    python bench/clip.py                      # ViT-B-32, random weights, CPU here
    python bench/clip.py --device cuda --images 4096 --batch 256
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def make_shard(path: Path, n: int, seed: int = 0) -> None:
    """`n` JPEGs (crops of scikit-image's photos, 256-512 px) with captions, as a download shard."""
    from mmcurate.demo import PHOTOS, load_photos, random_crop

    photos, captions = load_photos(), list(PHOTOS.values())
    rng = np.random.default_rng(seed)
    images, texts = [], []
    for _ in range(n):
        k = int(rng.integers(len(photos)))
        img = random_crop(photos[k], rng, 0.5)
        img.thumbnail((512, 512))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())
        texts.append(captions[k])
    pq.write_table(pa.table({"uid": [str(i) for i in range(n)], "row": np.arange(n),
                             "caption": texts, "image": images}), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default=None, help="tag or file; default: random weights (speed only)")
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=2, help="alternating timed passes of each; best is kept")
    args = parser.parse_args()

    import torch

    from mmcurate.schemas.config import config_from_dict
    from mmcurate.stages.clip_embed import ClipEmbedStage

    config = config_from_dict({"input": {"path": "x"}, "clip": {
        "model": args.model, "pretrained": args.pretrained, "batch_size": args.batch, "device": args.device}})
    stage = ClipEmbedStage(config)
    stage.prepare()
    stage.setup()
    scorer = stage.scorer
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "000000.parquet"
        make_shard(shard, args.images)

        def end_to_end() -> float:
            start = time.perf_counter()
            out = stage.process(pq.read_table(shard))
            assert out.num_rows == args.images and out["status"].to_pylist().count("kept") == args.images
            if scorer.device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        table = pq.read_table(shard)
        prepared = scorer._prepare(table["image"].to_pylist())
        tensors = [t for t, _ in prepared]
        captions = table["caption"].to_pylist()

        def forward_only() -> float:
            start = time.perf_counter()
            for i in range(0, args.images, args.batch):
                scorer.encode(tensors[i : i + args.batch], captions[i : i + args.batch])
            if scorer.device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        scorer.encode(tensors[: args.batch], captions[: args.batch])  # warm-up (kernels, allocator)
        e2e, fwd = [], []
        for _ in range(args.repeats):
            e2e.append(end_to_end())
            fwd.append(forward_only())
    result = {
        "model": args.model,
        "pretrained": args.pretrained or "random init",
        "device": scorer.device,
        "gpu": torch.cuda.get_device_name() if scorer.device == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "images": args.images,
        "batch": args.batch,
        "end_to_end_images_per_s": round(args.images / min(e2e), 1),
        "forward_only_images_per_s": round(args.images / min(fwd), 1),
    }
    result["ratio_end_to_end_over_forward"] = round(result["end_to_end_images_per_s"] / result["forward_only_images_per_s"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
