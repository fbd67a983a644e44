"""CLIP scoring through `mmcurate run`, with a CLIP the tests train themselves (no model hub here)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mmcurate.demo import shapes
from mmcurate.demo.server import ImageServer, Route
from mmcurate.filters.clip_score import resolve_weights
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.schemas.errors import ModelError
from mmcurate.stages.base import serial
from mmcurate.stages.clip import ClipFilterStage
from mmcurate.stages.clip_embed import ClipEmbedStage
from tests.conftest import SAFETY_OFF, run_cli

N_PAIRS = 200


def clip_config(model_dir, **clip) -> dict:
    return {"input": {"path": "x"}, "clip": {"model": f"local-dir:{model_dir}", "batch_size": 32, **clip}}


@pytest.mark.slow
def test_swapped_captions_are_dropped_through_run(shapes_clip, tmp_path, tripwire):
    model_dir, card = shapes_clip
    assert card["ranking_accuracy"] > 0.95
    rng = np.random.default_rng(99)
    fresh = shapes.pairs(N_PAIRS, seed=31337)  # not the training or held-out seeds
    routes = {f"/s/{i}.png": Route(shapes.png(p.image), content_type="image/png") for i, p in enumerate(fresh)}
    duplicate = f"/s/{N_PAIRS}.png"  # the same picture as /s/0.png under another caption
    routes[duplicate] = routes["/s/0.png"]
    with ImageServer(routes) as server:
        lines, swapped = [], set()
        for i, p in enumerate(fresh):
            if i % 2:
                swapped.add(server.url(f"/s/{i}.png"))
            lines.append({"url": server.url(f"/s/{i}.png"), "caption": shapes.wrong_caption(p, rng) if i % 2 else p.caption})
        lines.append({"url": server.url(duplicate), "caption": fresh[0].caption + " again"})
        (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        config = {
            "input": {"path": str(tmp_path / "pairs.jsonl"), "shard_size": 64},
            "download": {"allow_networks": ["127.0.0.1/32"], "retries": 0, "image_size": 64},
            "dedup": {"exact": False, "phash": {"enabled": False}},
            "clip": {"model": f"local-dir:{model_dir}", "min_score": card["threshold"], "batch_size": 32},
            "export": {"formats": ["parquet"]},
            **SAFETY_OFF,
        }
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        run_dir = tmp_path / "run"
        proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(run_dir), "--quiet")
        assert proc.returncode == 0, proc.stderr

        ledger = pq.read_table(run_dir / "ledger.parquet").to_pylist()
        assert len(ledger) == N_PAIRS + 1
        rows = [r for r in ledger if r["url"] != server.url(duplicate)]
        true_kept = np.mean([r["status"] == "kept" for r in rows if r["url"] not in swapped])
        swapped_dropped = np.mean([r["reason"] == "low_clip_score" for r in rows if r["url"] in swapped])
        assert true_kept >= 0.95 and swapped_dropped >= 0.95, (true_kept, swapped_dropped)

        # every decision explains itself; model and weights are on record
        weights = model_dir / "open_clip_model.safetensors"
        sha = hashlib.sha256(weights.read_bytes()).hexdigest()
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["models"]["clip_embed"]["sha256"] == sha
        drop = next(r for r in rows if r["reason"] == "low_clip_score")
        assert drop["stage"] == "clip" and f"< {card['threshold']:.4f}" in drop["detail"]
        assert drop["scores"]["clip_score"] < drop["scores"]["clip_threshold"]
        assert all(r["scores"]["clip_model"].endswith(f"sha256:{sha[:12]}") for r in rows)

        # embeddings per shard: float16, with uid, unit length
        emb = pq.read_table(run_dir / "stages" / "clip_embed" / "000000.parquet")
        dim = shapes.MODEL_CFG["embed_dim"]  # fixed_size_list: no int32 offsets to overflow
        assert emb.schema.field(C.CLIP_EMBEDDING).type == pa.list_(pa.float16(), dim) and C.UID in emb.column_names
        vec = np.asarray(emb[C.CLIP_EMBEDDING][0].as_py(), np.float32)
        assert len(vec) == shapes.MODEL_CFG["embed_dim"] and abs(np.linalg.norm(vec) - 1) < 0.01
        # exports carry the scores, not the embeddings
        exported = pq.read_table(run_dir / "shards" / "parquet" / "000000.parquet")
        assert C.CLIP_SCORE in exported.column_names and C.CLIP_EMBEDDING not in exported.column_names

        # re-threshold by percentile and turn on semantic dedup: no image is scored again
        stats = run_dir / "stages" / "clip_embed" / "000000.stats.json"
        before = stats.stat().st_mtime_ns
        proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(run_dir), "--quiet", "--force",
                       "--set", "clip.min_score=null", "--set", "clip.min_percentile=50",
                       "--set", "dedup.semantic.enabled=true", "--set", "dedup.semantic.threshold=0.995")
        assert proc.returncode == 0, proc.stderr
        assert stats.stat().st_mtime_ns == before
        ledger = pq.read_table(run_dir / "ledger.parquet").to_pylist()
        low = [r for r in ledger if r["reason"] == "low_clip_score"]
        assert abs(len(low) - (N_PAIRS + 1) / 2) <= 2
        assert "50th percentile of 201 scored rows" in low[0]["detail"]
        assert np.mean([r["reason"] == "low_clip_score" for r in ledger if r["url"] in swapped]) >= 0.95
        by_url = {r["url"]: r for r in ledger}
        pair = [by_url[server.url("/s/0.png")], by_url[server.url(duplicate)]]
        sem = [r for r in pair if r["reason"] == "semantic_duplicate"]
        assert len(sem) == 1 and sem[0]["stage"] == "semantic_dedup"
        assert sem[0]["scores"]["semantic_similarity"] > 0.995
        assert sem[0]["scores"]["semantic_dup_of"] in {r["uid"] for r in pair if r is not sem[0]}


def test_undecodable_image_fails_with_reason(shapes_clip):
    model_dir, card = shapes_clip
    stage = ClipEmbedStage(config_from_dict(clip_config(model_dir)))
    stage.prepare()
    good = shapes.pairs(3, seed=5)
    table = pa.table({
        C.UID: ["a", "b", "c", "d"], C.ROW: [0, 1, 2, 3],
        C.CAPTION: [good[0].caption, "x", good[1].caption, good[2].caption],
        C.IMAGE: [shapes.png(good[0].image), b"not an image", shapes.png(good[1].image), shapes.png(good[2].image)],
    })
    out = stage.process(table)
    assert out[C.STATUS].to_pylist() == ["kept", "failed", "kept", "kept"]
    assert out[C.REASON][1].as_py() == "undecodable_image" and out[C.CLIP_SCORE][1].as_py() is None
    assert min(out[C.CLIP_SCORE].to_pylist()[i] for i in (0, 2, 3)) > card["threshold"]


def test_percentile_threshold_and_explicit_scores():
    cfg = config_from_dict({"input": {"path": "x"}, "clip": {"min_percentile": 30}})
    assert cfg.clip.min_score is None  # the default fixed threshold gives way
    scores = np.linspace(0, 1, 101, dtype=np.float32)
    table = pa.table({C.UID: [str(i) for i in range(101)], C.ROW: list(range(101)), C.CLIP_SCORE: scores})
    out = ClipFilterStage(cfg).decide(table, serial)
    dropped = [r == "low_clip_score" for r in out[C.REASON].to_pylist()]
    assert sum(dropped) == 30 and all(dropped[:30]) and not any(dropped[30:])
    with pytest.raises(Exception, match="min_score or min_percentile"):
        config_from_dict({"input": {"path": "x"}, "clip": {"min_percentile": 30, "min_score": 0.2}})


def test_weights_errors_name_the_key(tmp_path, tripwire):
    with pytest.raises(ModelError) as err:
        resolve_weights(f"local-dir:{tmp_path}", None)
    assert err.value.key == "clip.model" and "open_clip_config.json" in str(err.value)
    with pytest.raises(ModelError) as err:
        resolve_weights("ViT-B-32", "no_such_tag")
    assert err.value.key == "clip.pretrained" and "laion2b_s34b_b79k" in str(err.value)
    with pytest.raises(ModelError) as err:
        resolve_weights("ViT-Nope", None)
    assert err.value.key == "clip.model"
    ckpt = tmp_path / "mine.pt"
    ckpt.write_bytes(b"weights")
    w = resolve_weights("ViT-B-32", str(ckpt))
    assert w.sha256 == hashlib.sha256(b"weights").hexdigest() and w.label.startswith("ViT-B-32@")


@pytest.mark.slow
def test_missing_model_folder_exits_2(tmp_path):
    (tmp_path / "u.jsonl").write_text('{"url": "http://127.0.0.1:9/a.jpg", "caption": "a"}\n')
    config = {"input": {"path": str(tmp_path / "u.jsonl")}, "clip": {"model": f"local-dir:{tmp_path / 'nope'}"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2 and "clip.model:" in proc.stderr and "nope" in proc.stderr


def test_no_hub_fails_at_once_naming_the_key(monkeypatch, tmp_path):
    """Where the hub's name does not resolve (patched here: no lookup leaves the machine) and the
    weights are not cached, the error comes at once, before huggingface_hub's minute of retries."""
    import socket

    import open_clip

    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if host in ("huggingface.co", "hub.mmcurate.test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(open_clip, "download_pretrained", lambda *a, **k: pytest.fail("the hub was asked"))
    with pytest.raises(ModelError, match=r"clip.pretrained: cannot download ViT-B-32@laion2b_s34b_b79k: the model hub's name "
                                         r"huggingface.co does not resolve"):
        resolve_weights("ViT-B-32", "laion2b_s34b_b79k")
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.mmcurate.test")
    with pytest.raises(ModelError, match=r"clip.model: cannot fetch hf-hub:org/clip: the model hub's name hub.mmcurate.test"):
        resolve_weights("hf-hub:org/clip", None)
