"""Toxic captions: a tiny BERT in detoxify's checkpoint format loads offline through detoxify.Detoxify;
alt-profanity-check's model from its wheel."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmcurate.filters import toxicity
from mmcurate.schemas.errors import ModelError

BAD = ["you are an idiot", "stupid moron", "i hate you idiot", "kill the moron"]
GOOD = ["a red cat on the beach", "photo of a blue house", "sunset tree", "a happy dog", "nice car photo"]
CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]  # detoxify's "original"


def build_tiny_detoxify(folder: Path, model_type: str) -> Path:
    """Train a 1-layer BERT to call BAD toxic (and insults), save its config and tokenizer in
    `folder`, and the weights as a detoxify checkpoint whose model type is `model_type`."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w for text in BAD + GOOD for w in text.split()})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    config = BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=len(CLASSES),
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    targets = torch.tensor([[1.0, 0, 0, 0, 1, 0]] * len(BAD) + [[0.0] * 6] * len(GOOD))
    batch = tokenizer(BAD + GOOD, return_tensors="pt", padding=True)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(150):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(**batch).logits, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    checkpoint = folder.parent / f"{folder.name}.ckpt"
    torch.save({
        "config": {"arch": {"args": {"model_type": model_type, "model_name": "BertForSequenceClassification",
                                     "tokenizer_name": "BertTokenizer", "num_classes": len(CLASSES)}},
                   "dataset": {"args": {"classes": CLASSES}}},
        "state_dict": model.state_dict(),
    }, checkpoint)
    return checkpoint


@pytest.mark.parametrize("stored_type", ["bert-base-uncased", "local folder"])
def test_detoxify_checkpoint_loads_offline(tmp_path, monkeypatch, tripwire, stored_type):
    """A released checkpoint names a hub model ("bert-base-uncased"): it is rewritten once into the
    cache with the local folder as its model type. One that already names a folder loads as is."""
    monkeypatch.setenv("MMCURATE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tiny-bert"
    ckpt = build_tiny_detoxify(folder, str(folder) if stored_type == "local folder" else stored_type)
    model = toxicity.resolve("original", str(ckpt), str(folder))
    if stored_type == "local folder":
        assert model.checkpoint == str(ckpt)
    else:
        assert Path(model.checkpoint).parent == tmp_path / "cache" / "detoxify"
        assert toxicity.resolve("original", str(ckpt), str(folder)).checkpoint == model.checkpoint  # cached
    scorer = toxicity.ToxicityScorer(model, "cpu", batch_size=3)
    assert isinstance(scorer._detoxify, __import__("detoxify").Detoxify)
    scores = scorer.score(BAD + GOOD)
    assert all(s > 0.8 for s, _ in scores[:len(BAD)]) and all(s < 0.2 for s, _ in scores[len(BAD):]), scores
    assert {c for _, c in scores[:len(BAD)]} <= {"toxicity", "insult"}  # detoxify's standard class names


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ModelError) as err:
        toxicity.resolve("original", str(tmp_path / "absent.ckpt"), None)
    assert err.value.key == "safety.toxicity.checkpoint"
    (tmp_path / "x.ckpt").write_bytes(b"0")
    with pytest.raises(ModelError) as err:
        toxicity.resolve("original", str(tmp_path / "x.ckpt"), str(tmp_path))
    assert err.value.key == "safety.toxicity.huggingface_config_path"


def test_profanity_check_flags_real_profanity_offline(tripwire):
    scorer = toxicity.ToxicityScorer(toxicity.resolve("profanity-check", None, None))
    scores = scorer.score(["what a fucking rip-off, this is shit", "a tabby cat looking at the camera"])
    assert scores[0][0] > 0.9 and scores[0][1] == "profanity" and scores[1][0] < 0.5


@pytest.fixture
def no_names(monkeypatch):
    """Every name fails to resolve, in-process: no DNS query leaves this machine."""
    import socket

    def refuse(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_a_named_model_is_fetched_on_the_driver_or_fails_naming_the_key(tmp_path, monkeypatch, tripwire, no_names):
    import torch.hub

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))  # an empty cache
    # no route to GitHub: the error names the key and says what works offline, before any row moves
    with pytest.raises(ModelError, match=r"cannot download detoxify's 'original'") as err:
        toxicity.resolve("original", None, None)
    assert err.value.key == "safety.toxicity.model" and "profanity-check" in str(err.value)
    # already in torch hub's cache (where detoxify looks): nothing is fetched, the manifest gets its sha256
    cached = tmp_path / "hub" / "checkpoints" / "toxic_original-c1212f89.ckpt"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"the released checkpoint")
    model = toxicity.resolve("original", None, None)
    assert model.sha256 == toxicity.file_sha256(cached) and model.label == f"detoxify:original:{model.sha256[:12]}"
