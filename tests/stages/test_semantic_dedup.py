"""Semantic dedup: exact pair search, the k-means (SemDeDup) path, and keepers by CLIP score."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmcurate.algos import embeddings as search
from mmcurate.algos.embeddings import similar_pairs
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.stages import semantic_dedup as sd
from mmcurate.stages.base import serial


def embeddings(n_base: int, n_copies: int, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unrelated unit vectors, plus near-copies of the first ones; returns (emb, index copied or -1)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_base, dim))
    copies = base[:n_copies] + rng.normal(scale=0.05, size=(n_copies, dim))
    emb = np.concatenate([base, copies]).astype(np.float32)
    source = np.r_[np.full(n_base, -1), np.arange(n_copies)]
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), source


def table_of(emb: np.ndarray, scores: np.ndarray) -> pa.Table:
    n = len(emb)
    return pa.table({
        C.UID: [f"u{i}" for i in range(n)],
        C.ROW: np.arange(n),
        C.CLIP_EMBEDDING: pa.array([e.astype(np.float16) for e in emb], pa.list_(pa.float16())),
        C.CLIP_SCORE: scores.astype(np.float32),
    })


def test_exact_search_finds_every_copy_and_keeps_the_best_aligned():
    emb, _ = embeddings(500, 40)
    scores = np.linspace(0.2, 0.4, len(emb))  # copies (later rows) score higher: they are kept
    stage = sd.SemanticDedupStage(config_from_dict({"input": {"path": "x"}, "dedup": {"semantic": {"enabled": True}}}))
    out = stage.decide(table_of(emb, scores), serial)
    reason = out[C.REASON].to_pylist()
    dropped = {i for i, r in enumerate(reason) if r == "semantic_duplicate"}
    assert dropped == set(range(40))  # the originals, whose copies are better aligned
    dup_of = out[C.SEMANTIC_DUP_OF].to_pylist()
    assert all(dup_of[i] == f"u{500 + i}" for i in range(40))
    sims = out[C.SEMANTIC_SIMILARITY].to_pylist()
    assert all(sims[i] >= 0.95 for i in dropped) and all(sims[i] is None for i in range(len(emb)) if i not in dropped)
    assert "cosine" in out[C.DETAIL][0].as_py()


def test_kmeans_path_agrees_with_exact_search(monkeypatch):
    emb, _ = embeddings(3000, 200, dim=32, seed=1)
    exact = similar_pairs(emb, 0.9, serial)
    monkeypatch.setattr(search, "EXACT_LIMIT", 100)
    monkeypatch.setattr(search, "CLUSTER_SIZE", 400)
    clustered = similar_pairs(emb, 0.9, serial)
    found = {tuple(p) for p in clustered[:, :2].tolist()}
    truth = {tuple(p) for p in exact[:, :2].tolist()}
    assert found <= truth and len(found) >= 0.95 * len(truth) and len(truth) >= 200
    again = similar_pairs(emb, 0.9, serial)  # deterministic
    assert np.array_equal(again, clustered)


def test_dropped_rows_are_near_their_keeper_not_chained():
    # a chain a - b - c with a ~ b and b ~ c above the threshold, but a and c below it
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([np.cos(0.25), np.sin(0.25), 0.0])
    c = np.array([np.cos(0.5), np.sin(0.5), 0.0])
    emb = np.stack([a, b, c]).astype(np.float32)
    threshold = float(np.cos(0.3))
    keeper_of, _ = sd.keepers(emb, np.arange(3), similar_pairs(emb, threshold, serial), threshold)
    assert keeper_of.tolist() == [-1, 0, -1]  # c is not near a, so it stays


def test_shards_written_before_embeddings_were_fixed_size_lists_are_read_with_the_new(tmp_path):
    """A run dir resumed across the change: clip_embed's shard 0 holds list<float16> (older
    versions), shard 1 fixed_size_list; semantic dedup reads both as one type and decides as on
    one table."""
    from mmcurate.algos.parallel import SerialTasks
    from mmcurate.engine.rundir import RunDir
    from mmcurate.engine.shards import GlobalShards, alive_rows
    from mmcurate.stages.base import decide_in_one_task
    from mmcurate.stages.clip_embed import ClipEmbedStage

    emb, _ = embeddings(300, 60, dim=16, seed=3)
    table = table_of(emb, np.linspace(0.2, 0.4, len(emb)))
    config = config_from_dict({"input": {"path": "x"}, "dedup": {"semantic": {"enabled": True}}})
    run_dir, half = RunDir.at(tmp_path), len(emb) // 2
    for name in ("ingest", "clip_embed"):
        run_dir.stage_dir(name).mkdir(parents=True)
    for shard, part in enumerate((table.slice(0, half), table.slice(half))):
        n = part.num_rows
        pq.write_table(pa.table({C.UID: part[C.UID], C.ROW: part[C.ROW], C.URL: ["u"] * n, C.CAPTION: ["c"] * n,
                                 C.STATUS: ["kept"] * n}), run_dir.shard_file("ingest", shard))
        column = part[C.CLIP_EMBEDDING] if shard == 0 else part[C.CLIP_EMBEDDING].cast(pa.list_(pa.float16(), 16))
        pq.write_table(pa.table({C.ROW: part[C.ROW], C.STATUS: ["kept"] * n, C.CLIP_SCORE: part[C.CLIP_SCORE],
                                 C.CLIP_EMBEDDING: column}), run_dir.shard_file("clip_embed", shard))
    embed = ClipEmbedStage(config)
    assert alive_rows(run_dir, 0, [embed])[C.CLIP_EMBEDDING].type == pa.list_(pa.float16(), 16)
    stage = sd.SemanticDedupStage(config)
    io = GlobalShards(str(run_dir.root), stage, [embed], 2, [0, 1], len(emb), 10**6)
    decide_in_one_task(stage, io, SerialTasks())
    got = pa.concat_tables([run_dir.read_shard(stage.name, s) for s in (0, 1)])
    want = stage.decide(table, serial)
    assert got[C.REASON].to_pylist() == want[C.REASON].to_pylist() and got[C.REASON].null_count < len(emb) - 50
