"""NSFW from CLIP embeddings (`safety.nsfw.model: clip_head`), with a head trained here on the
stand-in CLIP's embeddings: triangles play the flagged class. Its scores, the threshold, the config
errors, the README's conversion of NeMo Curator's head, and one `mmcurate run`."""

from __future__ import annotations

import hashlib
import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import save_file

from mmcurate.demo import shapes
from mmcurate.demo.server import ImageServer, Route
from mmcurate.filters.clip_score import ClipScorer, resolve_weights
from mmcurate.filters.embedding_head import EmbeddingHead
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.schemas.errors import ConfigError
from mmcurate.stages.safety import SafetyStage
from tests.conftest import run_cli

FLAGGED = "triangle"
README = Path(__file__).resolve().parents[2] / "README.md"


def embed(model_dir: Path, pairs: list) -> np.ndarray:
    scorer = ClipScorer(resolve_weights(f"local-dir:{model_dir}", None), "cpu", 64)
    _, emb, _ = scorer.score([shapes.png(p.image) for p in pairs], [p.caption for p in pairs])
    return np.stack(emb).astype(np.float32)


@pytest.fixture(scope="module")
def head(shapes_clip, tmp_path_factory) -> Path:
    """A logistic-regression head (one Linear layer, .safetensors) that flags triangles."""
    model_dir, _ = shapes_clip
    pairs = shapes.pairs(320, seed=4242)
    x = torch.from_numpy(embed(model_dir, pairs))
    y = torch.tensor([float(p.shape == FLAGGED) for p in pairs])
    torch.manual_seed(0)
    layer = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(layer(x)[:, 0], y).backward()
        opt.step()
    path = tmp_path_factory.mktemp("nsfw-head") / "triangles.safetensors"
    save_file({k: v.detach().contiguous() for k, v in layer.state_dict().items()}, str(path))
    return path


def config(model_dir: Path, **nsfw) -> dict:
    return {"input": {"path": "x"}, "clip": {"model": f"local-dir:{model_dir}"},
            "safety": {"toxicity": {"enabled": False}, "nsfw": {"model": "clip_head", **nsfw}}}


def rows(model_dir: Path, pairs: list) -> pa.Table:
    emb = embed(model_dir, pairs).astype(np.float16)
    return pa.table({C.UID: [f"u{i}" for i in range(len(pairs))], C.ROW: np.arange(len(pairs)),
                     C.CLIP_EMBEDDING: pa.array(list(emb), pa.list_(pa.float16(), emb.shape[1]))})


def test_the_head_flags_its_class_and_the_threshold_decides(shapes_clip, head):
    model_dir, _ = shapes_clip
    stage = SafetyStage(config_from_dict(config(model_dir, weights=str(head))))
    assert C.CLIP_EMBEDDING in stage.input_columns and C.IMAGE not in stage.input_columns  # no pixels read
    info = stage.prepare()["nsfw"]
    assert info == {"model": "clip_head", "weights": str(head), "sha256": hashlib.sha256(head.read_bytes()).hexdigest(),
                    "inputs": shapes.MODEL_CFG["embed_dim"]}
    fresh = shapes.pairs(120, seed=9001)
    table = rows(model_dir, fresh)
    out = stage.process(table)
    flagged = np.array([p.shape == FLAGGED for p in fresh])
    dropped = np.array([r == "nsfw_image" for r in out[C.REASON].to_pylist()])
    assert dropped[flagged].mean() >= 0.95 and dropped[~flagged].mean() <= 0.05
    # the score is the logit's sigmoid, on the stored (float16) embedding; a row goes above max_score
    expected = EmbeddingHead(str(head), probability=True).score(
        np.asarray(table[C.CLIP_EMBEDDING].to_pylist(), np.float32))
    scores = out[C.NSFW].to_numpy()
    assert np.allclose(scores, expected, atol=1e-4) and list(dropped) == list(scores > 0.5)
    assert set(out[C.NSFW_CLASS].to_pylist()) == {"clip_head"} and set(out[C.STATUS].to_pylist()) <= {"kept", "dropped"}
    assert re.fullmatch(r"nsfw 0\.\d{4} \(clip_head\) > 0\.5", out[C.DETAIL][int(np.argmax(dropped))].as_py())
    strict = SafetyStage(config_from_dict(config(model_dir, weights=str(head), max_score=0.01)))
    strict.prepare()
    assert [r == "nsfw_image" for r in strict.process(table)[C.REASON].to_pylist()] == list(scores > 0.01)
    # the model and the head's hash enter the fingerprint only under clip_head
    assert strict.config_sections()["nsfw"]["model"] == "clip_head"
    assert "model" not in SafetyStage(config_from_dict({"input": {"path": "x"}})).config_sections()["nsfw"]


def test_errors_name_the_key(shapes_clip, tmp_path):
    model_dir, _ = shapes_clip
    with pytest.raises(ConfigError, match="safety.nsfw.model: clip_head needs clip.enabled"):
        config_from_dict({**config(model_dir, weights="h.pt"), "clip": {"enabled": False}})
    with pytest.raises(ConfigError, match="safety.nsfw.weights: required with safety.nsfw.model: clip_head"):
        config_from_dict(config(model_dir))
    torch.save({"weight": torch.randn(1, 768), "bias": torch.zeros(1)}, tmp_path / "l14.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    for weights, message in ((tmp_path / "l14.pt", r"expects 768-d embeddings; clip.model .* gives 64-d"),
                             (tmp_path / "junk.pt", "not a torch state dict"), (tmp_path / "none.pt", "no such file")):
        with pytest.raises(ConfigError, match=f"safety.nsfw.weights: .*{message}"):
            SafetyStage(config_from_dict(config(model_dir, weights=str(weights)))).prepare()


def test_the_readme_converts_nemo_curators_head(tmp_path, monkeypatch):
    """NeMo Curator's NSFWModel (LAION's detector ported): standardise, 3 x (Linear, ReLU), Linear, sigmoid."""
    torch.manual_seed(1)
    dims = [16, 8, 12, 6, 1]
    state = {"norm.mean": torch.randn(dims[0]) * 0.1, "norm.variance": torch.rand(dims[0]) + 0.5}
    for i in range(4):
        state[f"linear_{i + 1}.weight"] = torch.randn(dims[i + 1], dims[i])
        state[f"linear_{i + 1}.bias"] = torch.randn(dims[i + 1])
    torch.save(state, tmp_path / "clip_autokeras_binary_nsfw.pth")
    text = README.read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "norm.variance" in b)
    code = textwrap.dedent(code)  # a block inside a list item
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})  # the snippet as users copy it, in their folder
    x = torch.nn.functional.normalize(torch.randn(50, dims[0]), dim=-1)
    ref = (x - state["norm.mean"]) / state["norm.variance"].sqrt()
    for i in range(1, 5):
        ref = ref @ state[f"linear_{i}.weight"].T + state[f"linear_{i}.bias"]
        ref = torch.relu(ref) if i < 4 else torch.sigmoid(ref)
    got = EmbeddingHead(str(tmp_path / "nsfw_head.safetensors"), probability=True, activation="relu").score(x.numpy())
    assert np.allclose(got, ref[:, 0].numpy(), atol=1e-5)


@pytest.mark.slow
def test_through_run_flagged_shapes_are_dropped_as_nsfw(shapes_clip, head, tmp_path, tripwire):
    model_dir, _ = shapes_clip
    pool = shapes.pairs(24, seed=515)
    routes = {f"/{i}.png": Route(shapes.png(p.image), content_type="image/png") for i, p in enumerate(pool)}
    with ImageServer(routes) as server:
        lines = [{"url": server.url(f"/{i}.png"), "caption": p.caption} for i, p in enumerate(pool)]
        (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        cfg = {"input": {"path": str(tmp_path / "in.jsonl")},
               "download": {"allow_networks": ["127.0.0.1/32"], "retries": 0, "image_size": 64},
               "dedup": {"exact": False, "phash": {"enabled": False}},
               "clip": {"model": f"local-dir:{model_dir}", "min_score": None, "batch_size": 32},
               "safety": {"toxicity": {"enabled": False}, "nsfw": {"model": "clip_head", "weights": str(head)}},
               "privacy": {"faces": {"enabled": False}, "pii": {"enabled": False}},
               "export": {"formats": ["parquet"]}}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"), "--quiet")
        assert proc.returncode == 0, proc.stderr
    ledger = sorted(pq.read_table(tmp_path / "run" / "ledger.parquet").to_pylist(), key=lambda r: r["row"])
    assert any(p.shape == FLAGGED for p in pool) and any(p.shape != FLAGGED for p in pool)
    for p, r in zip(pool, ledger):
        want = ("dropped", "safety", "nsfw_image") if p.shape == FLAGGED else ("kept", None, None)
        assert (r["status"], r["stage"], r["reason"]) == want, (p.shape, r["scores"]["nsfw"])
        assert r["scores"]["nsfw_class"] == "clip_head"
    models = json.loads((tmp_path / "run" / "manifest.json").read_text())["models"]["safety"]["nsfw"]
    assert models["model"] == "clip_head" and models["sha256"] == hashlib.sha256(head.read_bytes()).hexdigest()
