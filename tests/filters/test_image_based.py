"""DataComp image-based selection with the tests' tiny CLIP: a reference set of circles picks circles."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmcurate.demo import shapes
from mmcurate.filters.clip_score import ClipScorer, resolve_weights
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.schemas.errors import ConfigError
from mmcurate.stages.base import serial
from mmcurate.stages.image_based import ImageBasedStage


def pool_table(model_dir, pairs) -> pa.Table:
    scorer = ClipScorer(resolve_weights(f"local-dir:{model_dir}", None), "cpu", 64)
    _, emb, _ = scorer.score([shapes.png(p.image) for p in pairs], [p.caption for p in pairs])
    return pa.table({
        C.UID: [f"u{i}" for i in range(len(pairs))], C.ROW: np.arange(len(pairs)),
        C.CLIP_EMBEDDING: pa.array([e.astype(np.float16) for e in emb], pa.list_(pa.float16())),
    })


def stage(model_dir, reference, clusters=24) -> ImageBasedStage:
    return ImageBasedStage(config_from_dict({
        "input": {"path": "x"},
        "clip": {"model": f"local-dir:{model_dir}"},
        "quality": {"image_based": {"enabled": True, "reference_path": str(reference), "clusters": clusters}},
    }))


def test_reference_circles_keep_circles_and_drop_squares(shapes_clip, tmp_path):
    model_dir, _ = shapes_clip
    pool = [p for p in shapes.pairs(600, seed=77) if p.shape in ("circle", "square")]
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    for i, p in enumerate(x for x in shapes.pairs(200, seed=78) if x.shape == "circle"):
        (ref_dir / f"{i}.png").write_bytes(shapes.png(p.image))
    (ref_dir / "README.txt").write_text("not an image: skipped")
    out = stage(model_dir, ref_dir).decide(pool_table(model_dir, pool), serial)
    kept = np.array([s == "kept" for s in out[C.STATUS].to_pylist()])
    circles = np.array([p.shape == "circle" for p in pool])
    assert kept[circles].mean() >= 0.9 and kept[~circles].mean() <= 0.2, (kept[circles].mean(), kept[~circles].mean())
    reasons = set(out[C.REASON].to_pylist()) - {None}
    assert reasons == {"off_target_cluster"}
    assert out[C.IMAGE_CLUSTER].null_count == 0


def test_reference_parquet_and_dimension_check(shapes_clip, tmp_path):
    model_dir, _ = shapes_clip
    pool = shapes.pairs(60, seed=79)
    table = pool_table(model_dir, pool)
    ref = tmp_path / "ref.parquet"
    pq.write_table(table.select([C.CLIP_EMBEDDING]).slice(0, 10), ref)
    out = stage(model_dir, ref, clusters=6).decide(table, serial)
    assert out.num_rows == 60 and "kept" in out[C.STATUS].to_pylist()
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"embedding": [[0.1] * 7] * 3}), bad)
    with pytest.raises(ConfigError, match="reference embeddings are 7-d"):
        stage(model_dir, bad).decide(table, serial)
