"""Aesthetic and watermark heads: loading LAION's layouts, scoring, thresholds, ledger columns.

The weights here are random (LAION's are downloads): these tests check the plumbing, not quality.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from mmcurate.filters.embedding_head import EmbeddingHead
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.schemas.errors import ConfigError
from mmcurate.stages.clip_heads import ClipHeadsStage

DIM = 64


def laion_mlp(dim: int) -> dict:
    """LAION aesthetic predictor v2's layout (Linear, Dropout, ..., no activations)."""
    torch.manual_seed(0)
    seq = torch.nn.Sequential(
        torch.nn.Linear(dim, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1),
    )
    return {f"layers.{k}": v for k, v in seq.state_dict().items()}


def table(n: int, dim: int = DIM) -> pa.Table:
    emb = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return pa.table({C.UID: [f"u{i}" for i in range(n)], C.ROW: np.arange(n),
                     C.CLIP_EMBEDDING: pa.array(list(emb.astype(np.float16)), pa.list_(pa.float16()))})


def test_laion_layouts_load_and_score(tmp_path):
    torch.save(laion_mlp(DIM), tmp_path / "mlp.pth")
    torch.save({"weight": torch.randn(1, DIM), "bias": torch.zeros(1)}, tmp_path / "linear.pth")
    torch.save({"weight": torch.randn(2, DIM), "bias": torch.zeros(2)}, tmp_path / "two.pth")
    emb = np.eye(DIM, dtype=np.float32)[:5]
    mlp = EmbeddingHead(str(tmp_path / "mlp.pth"))
    assert mlp.score(emb).shape == (5,)
    prob = EmbeddingHead(str(tmp_path / "linear.pth"), probability=True).score(emb)
    two = EmbeddingHead(str(tmp_path / "two.pth")).score(emb)
    assert ((prob > 0) & (prob < 1)).all() and ((two > 0) & (two < 1)).all()
    # the rebuilt MLP computes what the original Sequential does
    state = laion_mlp(DIM)
    ref = torch.from_numpy(emb)
    for i in (0, 2, 4, 6, 7):
        ref = ref @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    assert np.allclose(mlp.score(emb), ref[:, 0].detach().numpy(), atol=1e-5)


def test_stage_thresholds_and_columns(tmp_path):
    torch.save(laion_mlp(DIM), tmp_path / "aesthetic.pth")
    torch.save({"weight": torch.randn(1, DIM) * 5, "bias": torch.zeros(1)}, tmp_path / "watermark.pth")
    rows = table(200)
    raw = EmbeddingHead(str(tmp_path / "aesthetic.pth")).score(
        np.asarray(rows[C.CLIP_EMBEDDING].to_pylist(), np.float32))
    threshold = float(np.median(raw))
    stage = ClipHeadsStage(config_from_dict({"input": {"path": "x"}, "quality": {
        "aesthetic": {"enabled": True, "weights": str(tmp_path / "aesthetic.pth"), "min_score": threshold},
        "watermark": {"enabled": True, "weights": str(tmp_path / "watermark.pth"), "max_score": 0.9}}}))
    info = stage.prepare()
    assert info["aesthetic"]["inputs"] == DIM and len(info["watermark"]["sha256"]) == 64
    out = stage.process(rows)
    reasons = out[C.REASON].to_pylist()
    aesthetic, watermark = out[C.AESTHETIC].to_numpy(), out[C.WATERMARK].to_numpy()
    assert [r == "low_aesthetic_score" for r in reasons] == list(aesthetic < threshold)
    assert all(r == "watermark" for r, a, w in zip(reasons, aesthetic, watermark) if a >= threshold and w > 0.9)
    assert 80 <= reasons.count("low_aesthetic_score") <= 120 and reasons.count("watermark") > 0
    assert "aesthetic score" in out[C.DETAIL][reasons.index("low_aesthetic_score")].as_py()


def test_wrong_dimension_or_file_names_the_key(tmp_path):
    torch.save(laion_mlp(768), tmp_path / "l14.pth")
    cfg = {"input": {"path": "x"}, "quality": {"aesthetic": {"enabled": True, "weights": str(tmp_path / "l14.pth")}}}
    stage = ClipHeadsStage(config_from_dict(cfg))
    stage.prepare()
    with pytest.raises(ConfigError, match="quality.aesthetic.weights: .* expects 768-d embeddings"):
        stage.process(table(3))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    cfg["quality"]["aesthetic"]["weights"] = str(tmp_path / "junk.pth")
    with pytest.raises(ConfigError, match="quality.aesthetic.weights: .*not a torch state dict"):
        ClipHeadsStage(config_from_dict(cfg)).prepare()
    with pytest.raises(ConfigError, match="quality.aesthetic.weights: required"):
        config_from_dict({"input": {"path": "x"}, "quality": {"aesthetic": {"enabled": True}}})
