"""Benchmark: near-duplicate precision and recall on real photographs, before and after the
near-duplicate rule's flat-region checks, on the same rows in one run.

    python bench/dedup_precision.py [--pairs-per-photo 8] [--seed 9]

Sets: the test's evaluation set (`tests/dedup_eval.build`, 114 distinct crops of scikit-image's
photographs with 342 web transformations), the same with the test's hard negatives
(`hard_negatives(seed=1)`: distinct overlapping crops of flat-dominated regions), and a larger
mined set of hard negatives (`--pairs-per-photo` pairs per photograph, `--seed`). Decisions come
from the dedup stage's own `near_duplicates` in this process, on hashes of the images as the
download stage stores them, ranked as `keep: largest` ranks (`tests/stages/test_dedup_eval.py`
runs the second set through `mmcurate run`). "before" is the
rule without the colour-grid correlation and without the cap on pHash + dHash distance.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmcurate.algos.parallel import serial  # noqa: E402
from mmcurate.filters.image_hash import signals  # noqa: E402
from mmcurate.stages.dedup import signals as S  # noqa: E402
from tests.dedup_eval import build, hard_negatives  # noqa: E402


def evaluate(items: list[tuple[str, bytes, str]], sig: S.Signals, k: int = 8, kd: int = 8) -> dict:
    """Removal precision and recall of the stage's near-duplicate decisions on `items`."""
    areas = []
    for _, data, _ in items:
        with Image.open(io.BytesIO(data)) as im:
            areas.append(im.size[0] * im.size[1])
    order = np.lexsort((np.arange(len(items)), -np.asarray(areas)))  # largest first, then input order
    rank = np.empty(len(items), np.int64)
    rank[order] = np.arange(len(items))
    keeper, _ = S.near_duplicates(sig, rank, np.ones(len(items), bool), k, kd, serial)
    groups = [g for _, _, g in items]
    sizes: dict[str, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    redundant = sum(s - 1 for s in sizes.values())
    dropped = np.flatnonzero(keeper >= 0)
    true = sum(groups[keeper[i]] == groups[i] for i in dropped)
    false_drops = [(items[i][0], items[keeper[i]][0]) for i in dropped if groups[keeper[i]] != groups[i]]
    return {"images": len(items), "distinct": len(sizes), "dropped": len(dropped), "false": len(dropped) - true,
            "precision": true / max(len(dropped), 1), "recall": true / max(redundant, 1), "false_drops": false_drops}


def stored(items: list[tuple[str, bytes, str]]) -> list[tuple[str, bytes, str]]:
    """The items as the download stage stores them (checked, resized, re-encoded): what dedup hashes."""
    from mmcurate.schemas.config import config_from_dict
    from mmcurate.stages.download import ImageCheck

    check = ImageCheck(config_from_dict({"input": {"path": "x"}}).download)
    return [(name, check(data).image, group) for name, data, group in items]


def signals_of(items: list[tuple[str, bytes, str]]) -> S.Signals:
    found = [signals(data) for _, data, _ in stored(items)]
    return S.Signals.from_columns([s.phash for s in found], [s.dhash for s in found], [s.luma_std for s in found],
                                  [s.colour for s in found])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs-per-photo", type=int, default=8)
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--false", action="store_true", help="list the false drops")
    args = ap.parse_args()
    base = build(seed=0)
    sets = {"evaluation set": base, "+ hard negatives (the test's)": base + hard_negatives(seed=1),
            f"+ mined hard negatives ({args.pairs_per_photo}/photo)":
                base + hard_negatives(seed=args.seed, pairs_per_photo=args.pairs_per_photo, tries=2000)}
    rules = {"before": dict(MIN_COLOUR_CORRELATION=-2.0, MAX_DISTANCE_SUM=np.inf),
             "after (default)": dict(MIN_COLOUR_CORRELATION=S.MIN_COLOUR_CORRELATION, MAX_DISTANCE_SUM=S.MAX_DISTANCE_SUM)}
    print(f"| set | images | distinct | rule | dropped | false drops | precision | recall |\n|{'---|' * 8}")
    for label, items in sets.items():
        sig = signals_of(items)
        for rule, constants in rules.items():
            saved = {name: getattr(S, name) for name in constants}
            for name, value in constants.items():
                setattr(S, name, value)
            try:
                r = evaluate(items, sig)
            finally:
                for name, value in saved.items():
                    setattr(S, name, value)
            if "--false" in sys.argv:
                print(r["false_drops"])
            print(f"| {label} | {r['images']} | {r['distinct']} | {rule} | {r['dropped']} | {r['false']} | "
                  f"{r['precision']:.4f} | {r['recall']:.4f} |")


if __name__ == "__main__":
    main()
