"""The documents ledger: a document's verdict from its images' ledger rows (the rules of the
`documents` section), and runs of MMC4 and OBELICS inputs through the image stages from a loopback
server, with both invariants. A pairs input's run is as it was: no document column anywhere."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mmcurate.demo.server import ImageServer, Route
from mmcurate.algos.near_text import first_copies, jaccard, shingles
from mmcurate.filters.paragraphs import Outcome, ParagraphRules, describe
from mmcurate.jobs.document_rules import verdict
from mmcurate.jobs.ledger import score_fields
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.schemas.documents_section import DocumentsConfig
from mmcurate.stages import build_stages, origin_columns
from tests.conftest import SAFETY_OFF, make_image, run_cli

WORDS = "enough words in this paragraph to pass the document rule easily"


def doc(words: int = 50, status: str = C.KEPT, texts: int = 1) -> dict:
    return {C.STATUS: status, C.REASON: "malformed_document" if status == C.FAILED else None, C.DETAIL: None,
            C.TEXTS: [" ".join(["word"] * words)] + ["x"] * (texts - 1)}


def left(d: dict, removed: dict | None = None) -> Outcome:
    """What paragraph rules that removed `removed` ({reason: count}, from the end) left of `d`'s texts."""
    gone = sum((removed or {}).values())
    kept = list(range(len(d[C.TEXTS]) - gone))
    return Outcome(kept, [d[C.TEXTS][k] for k in kept], Counter(removed or {}))


def decided(d: dict, images: list[tuple[int, str, str | None]], cfg=None, removed=None) -> tuple:
    v = verdict(d, images, left(d, removed), cfg or DocumentsConfig())
    return v.status, v.reason, v.images_kept, v.detail


def test_rules_on_hand_made_image_rows():
    assert decided(doc(), [(0, C.KEPT, None), (2, C.DROPPED, "nsfw_image"), (4, C.FAILED, "http_404")])[:3] == (
        C.DROPPED, "nsfw_document", 1)
    assert decided(doc(), [(1, C.KEPT, None), (3, C.DROPPED, "exact_duplicate")]) == (
        C.KEPT, None, 1, "1 of 2 images removed (1 exact_duplicate)")
    assert decided(doc(), [(0, C.DROPPED, "low_clip_score")]) == (
        C.DROPPED, "too_few_images", 0, "0 images kept < documents.min_images 1; 1 of 1 images removed (1 low_clip_score)")
    assert decided(doc(), [])[:2] == (C.DROPPED, "too_few_images")
    assert decided(doc(3), [(0, C.KEPT, None)]) == (C.DROPPED, "too_few_words", 1, "3 words < documents.min_words 10")
    assert decided(doc(0, C.FAILED), [])[:2] == (C.FAILED, "malformed_document")
    # the upper cuts, OBELICS's: 30 images, 2,000 words
    assert decided(doc(), [(p, C.KEPT, None) for p in range(31)])[:2] == (C.DROPPED, "too_many_images")
    assert decided(doc(2001), [(0, C.KEPT, None)])[:2] == (C.DROPPED, "too_many_words")
    # words are counted on the texts the paragraph rules left; their removals are said
    assert decided(doc(50, texts=3), [(0, C.KEPT, None)], removed={"url_caption": 1}) == (
        C.KEPT, None, 1, "1 of 3 texts removed (1 url_caption)")
    assert decided(doc(50, texts=2), [(0, C.KEPT, None)], removed={"toxic_caption": 1, "url_caption": 1})[:2] == (
        C.DROPPED, "too_few_words")
    relaxed = DocumentsConfig(nsfw_drops_document=False, min_images=0, min_words=0, max_images=None, max_words=None)
    assert decided(doc(2001), [(p, C.KEPT, None) for p in range(31)] + [(40, C.DROPPED, "nsfw_image")], relaxed) == (
        C.KEPT, None, 31, "1 of 32 images removed (1 nsfw_image)")


def test_paragraph_rules_use_the_runs_text_filters():
    config = config_from_dict({"input": {"path": "x.jsonl", "format": "obelics"}, **SAFETY_OFF,
                               "quality": {"text": {"enabled": True}},
                               "privacy": {"faces": {"enabled": False}, "pii": {"enabled": True}}})
    rules = ParagraphRules(config)
    assert [f.name for f in rules.filters] == ["text", "pii"] and rules.active
    a, b = rules.apply([[WORDS, "https://example.com/a.jpg", f"mail me at jane.doe@example.com, {WORDS}"], ["IMG_0042.JPG"]])
    assert a.kept == [0, 2] and a.removed == Counter({"url_caption": 1}) and a.rewritten == Counter({"redacted": 1})
    assert "jane.doe@example.com" not in a.texts[1] and a.texts[0] == WORDS
    assert b.kept == [] and b.removed == Counter({"filename_caption": 1})
    assert describe(a, 3) == "1 of 3 texts removed (1 url_caption); 1 redacted"
    off = config.model_copy(update={"documents": DocumentsConfig(paragraphs={"enabled": False})})
    assert not ParagraphRules(off).active
    # toxicity (the offline profanity-check model, its own max_score) and the paragraph's language
    config = config_from_dict({"input": {"path": "x.jsonl", "format": "obelics"}, **SAFETY_OFF,
                               "safety": {"toxicity": {"enabled": True, "model": "profanity-check"}, "nsfw": {"enabled": False}},
                               "quality": {"language": {"accuracy": "low"}},
                               "documents": {"paragraphs": {"languages": ["en"]}}})
    rules = ParagraphRules(config)
    rules.prepare()
    rules.setup()
    (c,) = rules.apply([[WORDS, "you are a fucking idiot and everyone here hates your stupid shit",
                         "Dieser Absatz ist auf Deutsch geschrieben und sollte entfernt werden"]])
    assert c.kept == [0] and c.removed == Counter({"toxic_caption": 1, "wrong_language": 1})


def test_near_duplicate_texts():
    base = " ".join(f"w{i}" for i in range(60))
    edited = base.replace("w30", "changed")  # 3 of 58 word 3-grams differ
    other = " ".join(f"v{i}" for i in range(60))
    assert jaccard(shingles(base), shingles(edited)) > 0.8
    assert first_copies([base, other, edited, base, "short text"], 0.8) == [
        None, None, (0, pytest.approx(jaccard(shingles(base), shingles(edited)))), (0, 1.0), None]
    assert first_copies([base, edited], 0.99) == [None, None]
    # MinHash proposes every pair the exact comparison with each kept text finds (texts of numbered
    # words: a linear hash of such shingles missed half of them)
    rng = np.random.default_rng(0)
    texts = []
    for i in range(300):
        copy = texts[int(rng.integers(0, i))].split() if i % 10 == 9 else None
        if copy:
            copy[int(rng.integers(0, len(copy)))] = "changed"
        texts.append(" ".join(copy) if copy else " ".join(f"w{x}" for x in rng.integers(0, 50_000, 120)))
    kept, expected = [], []
    for i, t in enumerate(texts):
        best = max(((jaccard(shingles(t), shingles(texts[j])), -j) for j in kept), default=(0, 0))
        expected.append((-best[1], best[0]) if best[0] >= 0.8 else None)
        kept += [] if expected[-1] else [i]
    assert first_copies(texts, 0.8) == expected and sum(e is not None for e in expected) == 30
    # a text that is not kept (its document dropped) may repeat a kept one, and is never repeated
    assert first_copies([other, base, edited], 0.8, [True, False, True]) == [None, None, None]
    assert first_copies([base, edited], 0.8, [True, False])[1][0] == 0


def test_a_pairs_run_has_no_document_column():
    stages = build_stages(config_from_dict({"input": {"path": "x.csv"}}))
    assert origin_columns(stages) == [] and C.ingest_schema(False) == C.INGEST_SCHEMA
    assert C.ledger_schema(score_fields(stages), origin_columns(stages)).names == [
        *(f.name for f in C.LEDGER_BASE_FIELDS), C.SCORES]
    pool = build_stages(config_from_dict({"input": {"path": "x.tar"}}))
    assert C.ledger_schema([], origin_columns(pool)) == C.ledger_schema([], True)


# ----------------------------------------------------------------------------- runs

def serve():
    routes = {f"/img/{i}.jpg": Route(make_image(i, size=(90, 70))) for i in range(6)}
    routes["/copy/2.jpg"] = Route(make_image(2, size=(90, 70)))  # the same bytes under another URL
    return ImageServer(routes)


def run(tmp_path, fmt: str, path: str, **more):
    config = {"input": {"path": path, "format": fmt, "shard_size": 3},
              "download": {"allow_networks": ["127.0.0.1/32"], "threads": 4, "retries": 0, "image_size": 48},
              "dedup": {"exact": True, "phash": {"enabled": False, "keep": "first"}},
              "clip": {"enabled": False}, **SAFETY_OFF, "export": {"formats": ["parquet"]}, **more}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ledger = pq.read_table(tmp_path / "run" / "ledger.parquet").to_pylist()
    docs = pq.read_table(tmp_path / "run" / "documents.parquet").to_pylist()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    return proc, ledger, docs, manifest


def check_invariants(proc, ledger, docs, manifest) -> None:
    n = {s: sum(r[C.STATUS] == s for r in docs) for s in C.STATUSES}
    assert {k: manifest["documents"][k] for k in ("documents", *C.STATUSES)} == {"documents": len(docs), **n}
    assert sum(manifest["documents"]["reasons"].values()) == n["dropped"] + n["failed"]
    assert [r[C.DOCUMENT] for r in docs] == list(range(len(docs)))
    assert f"documents: {len(docs)} = {n['kept']} kept + {n['dropped']} dropped + {n['failed']} failed" in proc.stdout
    assert manifest["ledger"]["rows"] == len(ledger) == sum(manifest["ledger"][s] for s in C.STATUSES)
    for d in docs:  # each document's images_in and images_kept are its image rows'
        mine = [r for r in ledger if r[C.DOCUMENT] == d[C.DOCUMENT]]
        assert len(mine) == d[C.IMAGES_IN] and all(r[C.DOCUMENT_ID] == d[C.DOCUMENT_ID] for r in mine)
        if d[C.STATUS] != C.FAILED:
            assert d[C.IMAGES_KEPT] == sum(r[C.STATUS] == C.KEPT for r in mine)


@pytest.mark.slow
def test_mmc4_run(tmp_path):
    with serve() as server:
        def info(i, path, text=0):
            return {"image_name": f"{i}.jpg", "raw_url": server.url(path), "matched_text_index": text, "matched_sim": 0.3}
        a = [
            {"url": "https://s.example/0", "text_list": [WORDS, "second"],  # a 404 among its images
             "image_info": [info(0, "/img/0.jpg"), info(1, "/missing.jpg", 1), info(2, "/img/1.jpg")]},
            {"url": "https://s.example/1", "text_list": [WORDS],  # a duplicate within the document
             "image_info": [info(0, "/img/2.jpg"), info(1, "/copy/2.jpg")]},
            "{broken",
        ]
        b = [
            {"url": "https://s.example/3", "text_list": [WORDS + " too"], "image_info": [info(0, "/img/0.jpg")]},  # doc 0's image
            {"url": "https://s.example/4", "text_list": [WORDS], "image_info": []},  # no image
            {"url": "https://s.example/5", "text_list": ["tiny"], "image_info": [info(0, "/img/3.jpg")]},  # too few words
            {"url": "https://s.example/6", "text_list": [WORDS], "image_info": [info(0, "/img/4.jpg", 9), info(1, "/img/5.jpg")]},
            {"url": "https://s.example/7", "text_list": [], "image_info": []},
        ]
        (tmp_path / "in").mkdir()
        for name, docs in (("a", a), ("b", b)):
            (tmp_path / "in" / f"{name}.jsonl").write_text("".join((d if isinstance(d, str) else json.dumps(d)) + "\n" for d in docs))
        proc, ledger, docs, manifest = run(tmp_path, "mmc4", str(tmp_path / "in" / "*.jsonl"))
    check_invariants(proc, ledger, docs, manifest)
    assert [(d[C.STATUS], d[C.REASON], d[C.IMAGES_IN], d[C.IMAGES_KEPT]) for d in docs] == [
        (C.KEPT, None, 3, 2), (C.KEPT, None, 2, 1), (C.FAILED, "malformed_row", 0, 0), (C.DROPPED, "too_few_images", 1, 0),
        (C.DROPPED, "too_few_images", 0, 0), (C.DROPPED, "too_few_words", 1, 1), (C.KEPT, None, 2, 1),
        (C.FAILED, "empty_document", 0, 0)]
    assert docs[0][C.DETAIL] == "1 of 3 images removed (1 http_404)" and docs[0][C.URL] == "https://s.example/0"
    assert "1 exact_duplicate" in docs[3][C.DETAIL] and docs[2][C.STAGE] == "ingest"
    got = [(r[C.DOCUMENT], r[C.POSITION], r[C.STATUS], r[C.REASON]) for r in ledger]
    assert got == [(0, 0, C.KEPT, None), (0, 1, C.FAILED, "http_404"), (0, 2, C.KEPT, None),
                   (1, 0, C.KEPT, None), (1, 1, C.DROPPED, "exact_duplicate"),
                   (3, 0, C.DROPPED, "exact_duplicate"), (5, 0, C.KEPT, None),
                   (6, 0, C.FAILED, "missing_caption"), (6, 1, C.KEPT, None)]
    assert ledger[1][C.CAPTION] == "second" and ledger[5][C.CAPTION] == WORDS + " too"
    exported = [r for f in sorted((tmp_path / "run" / "shards" / "parquet").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert {(r[C.DOCUMENT], r[C.POSITION]) for r in exported} == {(0, 0), (0, 2), (1, 0), (5, 0), (6, 1)}
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert report["documents"] == manifest["documents"]


@pytest.mark.slow
def test_obelics_run(tmp_path):
    with serve() as server:
        def doc(url, items):
            return {"images": [server.url(x[4:]) if x.startswith("img:") else None for x in items],
                    "texts": [None if x.startswith("img:") else x for x in items],
                    "general_metadata": json.dumps({"url": url})}
        docs_in = [
            doc("https://s.example/a", ["img:/img/0.jpg", WORDS, "img:/missing.jpg", "img:/img/1.jpg"]),
            doc("https://s.example/b", [WORDS, "img:/img/2.jpg", "img:/img/0.jpg", "img:/copy/2.jpg"]),
            {"images": [None, server.url("/img/3.jpg")], "texts": [WORDS], "general_metadata": "{}"},  # unequal
            doc("https://s.example/d", [WORDS, "no image here"]),
            # a page copied from the first (the same images, a word of its text changed), with a URL for a
            # paragraph and an e-mail address in another: the paragraph rules remove one, redact the other
            doc("https://s.example/e", ["img:/img/0.jpg", WORDS.replace("easily", "simply"), "img:/missing.jpg",
                                        "img:/img/1.jpg"]),
            doc("https://s.example/f", ["img:/img/4.jpg", WORDS, "https://s.example/f/photo.jpg",
                                        f"write to jane.doe@example.com for {WORDS}"]),
        ]
        pq.write_table(pa.Table.from_pylist(docs_in), tmp_path / "docs.parquet")
        proc, ledger, docs, manifest = run(
            tmp_path, "obelics", str(tmp_path / "docs.parquet"), quality={"text": {"enabled": True}},
            privacy={"faces": {"enabled": False}, "pii": {"enabled": True}},
            documents={"near_duplicate_similarity": 0.5})
    check_invariants(proc, ledger, docs, manifest)
    assert [(d[C.STATUS], d[C.REASON], d[C.IMAGES_IN], d[C.IMAGES_KEPT]) for d in docs] == [
        (C.KEPT, None, 3, 2), (C.KEPT, None, 3, 1), (C.FAILED, "malformed_document", 0, 0),
        (C.DROPPED, "too_few_images", 0, 0), (C.DROPPED, "near_duplicate_document", 3, 0), (C.KEPT, None, 1, 1)]
    assert docs[1][C.DETAIL] == "2 of 3 images removed (2 exact_duplicate)"
    # the copy lost its images as duplicates, and is named for what it is: a copy of the first page
    assert docs[4][C.DUP_OF] == docs[0][C.DOCUMENT_ID] and 0.5 <= docs[4][C.DUP_SIMILARITY] < 1
    assert docs[5][C.DETAIL] == "1 of 3 texts removed (1 url_caption); 1 redacted"
    assert (docs[5][C.TEXTS_IN], docs[5][C.TEXTS_KEPT], docs[5][C.WORDS]) == (3, 2, 27) and docs[5][C.WORDS_KEPT] == 26
    step = [r for f in sorted((tmp_path / "run" / "stages" / "documents").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert step[5][C.TEXT_POSITIONS] == [1, 3] and "jane.doe@example.com" not in step[5][C.TEXTS][1]
    got = [(r[C.DOCUMENT], r[C.POSITION], r[C.STATUS], r[C.REASON], r[C.CAPTION]) for r in ledger if r[C.DOCUMENT] < 2]
    assert got == [(0, 0, C.KEPT, None, WORDS), (0, 2, C.FAILED, "http_404", WORDS), (0, 3, C.KEPT, None, WORDS),
                   (1, 1, C.KEPT, None, WORDS), (1, 2, C.DROPPED, "exact_duplicate", WORDS),
                   (1, 3, C.DROPPED, "exact_duplicate", WORDS)]
