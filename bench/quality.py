"""Quality filters on CPU: rows/s of each on the same 10,000 rows, one run, one table.

Captions mix real sentences in several languages with boilerplate; embeddings are random unit
vectors of ViT-L/14's width (768) for the heads and image-based selection (their speed does not
depend on what the vectors mean). Heads have LAION's aesthetic-MLP shape with random weights.

    python bench/quality.py [--rows 10000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

SENTENCES = [
    "a dog catching a frisbee in the park", "two children building a sandcastle on the beach",
    "un chien qui attrape un frisbee dans le parc", "ein Hund fängt einen Frisbee im Park",
    "un perro atrapando un frisbi en el parque", "собака ловит фрисби в парке", "IMG_1234.jpg",
    "untitled", "an old red tractor parked in front of a wooden barn at sunset", "red car",
    "https://example.com/a.jpg", "2019-07-14 13:45:02", "the view from the top of the mountain in winter",
]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()
    import torch

    from mmcurate.filters import caption_text, image_based, language
    from mmcurate.filters.basic import basic_reason
    from mmcurate.filters.embedding_head import EmbeddingHead

    rng = np.random.default_rng(0)
    n = args.rows
    captions = [f"{SENTENCES[i % len(SENTENCES)]} {i}" if i % 3 else SENTENCES[i % len(SENTENCES)] for i in range(n)]
    sizes = rng.integers(100, 1200, (n, 2))
    emb = rng.normal(size=(n, 768)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ref = emb[rng.choice(n, 500, replace=False)] + rng.normal(scale=0.05, size=(500, 768)).astype(np.float32)

    stats = [caption_text.stats(c) for c in captions]
    # lingua loads each language's models on first use: a once-per-worker cost, timed apart
    first = {mode: timed(lambda m=mode: language.identify(captions, m)) for mode in ("high", "low")}
    langs = language.identify(captions)
    rules = {"languages": ["en"], "min_confidence": 0.0, "min_words": 3, "min_chars": 6, "min_side": 200, "max_aspect": 3.0}
    with tempfile.TemporaryDirectory() as tmp:
        seq = torch.nn.Sequential(torch.nn.Linear(768, 1024), torch.nn.Dropout(), torch.nn.Linear(1024, 128),
                                  torch.nn.Dropout(), torch.nn.Linear(128, 64), torch.nn.Dropout(),
                                  torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))
        torch.save({f"layers.{k}": v for k, v in seq.state_dict().items()}, Path(tmp) / "aesthetic.pth")
        torch.save({"weight": torch.randn(2, 768), "bias": torch.zeros(2)}, Path(tmp) / "watermark.pth")
        aesthetic = EmbeddingHead(str(Path(tmp) / "aesthetic.pth"))
        watermark = EmbeddingHead(str(Path(tmp) / "watermark.pth"))
        aesthetic.load()
        watermark.load()
        seconds = {
            "caption statistics": timed(lambda: [caption_text.stats(c) for c in captions]),
            "caption boilerplate": timed(lambda: [caption_text.boilerplate(c, s, 0.5, 0.5, 4)
                                                  for c, s in zip(captions, stats)]),
            "language id (lingua, high accuracy)": timed(lambda: language.identify(captions, "high")),
            "language id (lingua, low accuracy)": timed(lambda: language.identify(captions, "low")),
            "basic rules (given language)": timed(lambda: [basic_reason(s, lang, conf, int(w), int(h), **rules)
                                                           for s, (lang, conf), (w, h) in zip(stats, langs, sizes)]),
            "image-based (k-means, 78 centres)": timed(lambda: image_based.select(emb, ref, None)),
            "aesthetic head (LAION MLP)": timed(lambda: aesthetic.score(emb)),
            "watermark head (linear)": timed(lambda: watermark.score(emb)),
        }
    table = [{"filter": k, "seconds": round(v, 3), "rows_per_s": round(n / v)} for k, v in seconds.items()]
    width = max(len(r["filter"]) for r in table)
    print(f"{'filter':<{width}}  {'rows/s':>10}  {'seconds':>8}")
    for r in table:
        print(f"{r['filter']:<{width}}  {r['rows_per_s']:>10,}  {r['seconds']:>8}")
    loads = {f"lingua_{m}_first_pass_s": round(first[m], 2) for m in first}
    print(json.dumps({"rows": n, "torch_threads": torch.get_num_threads(), **loads, "filters": table}))


if __name__ == "__main__":
    main()
