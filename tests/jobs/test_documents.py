"""The documents ledger: a document's verdict from its images' ledger rows (the rules of the
`documents` section), and runs of MMC4 and OBELICS inputs through the image stages from a loopback
server, with both invariants. A pairs input's run is as it was: no document column anywhere."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mmcurate.demo.server import ImageServer, Route
from mmcurate.jobs.documents import decide
from mmcurate.jobs.ledger import score_fields
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.schemas.documents_section import DocumentsConfig
from mmcurate.stages import build_stages, origin_columns
from tests.conftest import SAFETY_OFF, make_image, run_cli

WORDS = "enough words in this paragraph to pass the document rule easily"


def documents(*docs: tuple[int, int, str]) -> pa.Table:
    """(images, words, status) per document, numbered from 0."""
    return pa.Table.from_pylist([
        {C.DOCUMENT: i, C.DOCUMENT_ID: f"d{i}", C.SOURCE: "x.jsonl", C.SOURCE_LINE: i + 1, C.URL: None, C.STATUS: status,
         C.REASON: "malformed_document" if status == C.FAILED else None, C.DETAIL: None, C.FIRST_ROW: 0,
         C.IMAGES_IN: n, C.WORDS: words} for i, (n, words, status) in enumerate(docs)],
        schema=pa.schema([f for f in C.DOCUMENTS_SCHEMA if f.name in (*C.DOCUMENT_LEDGER_SCHEMA.names, C.FIRST_ROW)]))


def images(*rows: tuple[int, int, str, str | None]) -> pa.Table:
    """(document, position, status, reason) per image row, in row order."""
    return pa.table({C.ROW: pa.array(range(len(rows)), pa.int64()), C.DOCUMENT: pa.array([r[0] for r in rows], pa.int64()),
                     C.POSITION: pa.array([r[1] for r in rows], pa.int32()), C.STATUS: [r[2] for r in rows],
                     C.REASON: pa.array([r[3] for r in rows], pa.string())})


def test_rules_on_a_hand_made_image_ledger():
    docs = documents((3, 50, C.KEPT), (2, 50, C.KEPT), (1, 50, C.KEPT), (0, 50, C.KEPT), (1, 3, C.KEPT), (0, 0, C.FAILED))
    imgs = images((0, 0, C.KEPT, None), (0, 2, C.DROPPED, "nsfw_image"), (0, 4, C.FAILED, "http_404"),
                  (1, 1, C.KEPT, None), (1, 3, C.DROPPED, "exact_duplicate"),
                  (2, 0, C.DROPPED, "low_clip_score"), (4, 0, C.KEPT, None))
    out = decide(docs, imgs, DocumentsConfig()).to_pylist()
    got = [(r[C.STATUS], r[C.STAGE], r[C.REASON], r[C.IMAGES_KEPT]) for r in out]
    assert got == [(C.DROPPED, "documents", "nsfw_document", 1), (C.KEPT, None, None, 1),
                   (C.DROPPED, "documents", "too_few_images", 0), (C.DROPPED, "documents", "too_few_images", 0),
                   (C.DROPPED, "documents", "too_few_words", 1), (C.FAILED, "ingest", "malformed_document", 0)]
    assert "position 2" in out[0][C.DETAIL] and out[1][C.DETAIL] == "1 of 2 images removed (1 exact_duplicate)"
    assert out[2][C.DETAIL] == "0 images kept < documents.min_images 1; 1 of 1 images removed (1 low_clip_score)"
    assert out[4][C.DETAIL] == "3 words < documents.min_words 10"

    relaxed = decide(docs, imgs, DocumentsConfig(nsfw_drops_document=False, min_images=0, min_words=0)).to_pylist()
    assert [r[C.STATUS] for r in relaxed] == [C.KEPT] * 5 + [C.FAILED]
    assert relaxed[0][C.DETAIL] == "2 of 3 images removed (1 nsfw_image, 1 http_404)"


def test_image_rows_out_of_step_with_their_documents_are_refused():
    from mmcurate.schemas.errors import LedgerError

    with pytest.raises(LedgerError, match="do not follow"):
        decide(documents((1, 50, C.KEPT), (1, 50, C.KEPT)), images((1, 0, C.KEPT, None), (0, 0, C.KEPT, None)), DocumentsConfig())


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


def run(tmp_path, fmt: str, path: str):
    config = {"input": {"path": path, "format": fmt, "shard_size": 3},
              "download": {"allow_networks": ["127.0.0.1/32"], "threads": 4, "retries": 0, "image_size": 48},
              "dedup": {"exact": True, "phash": {"enabled": False, "keep": "first"}},
              "clip": {"enabled": False}, **SAFETY_OFF, "export": {"formats": ["parquet"]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ledger = pq.read_table(tmp_path / "run" / "ledger.parquet").to_pylist()
    docs = pq.read_table(tmp_path / "run" / "documents.parquet").to_pylist()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    return proc, ledger, docs, manifest


def check_invariants(proc, ledger, docs, manifest) -> None:
    n = {s: sum(r[C.STATUS] == s for r in docs) for s in C.STATUSES}
    assert manifest["documents"] == {"documents": len(docs), **n}
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
        ]
        pq.write_table(pa.Table.from_pylist(docs_in), tmp_path / "docs.parquet")
        proc, ledger, docs, manifest = run(tmp_path, "obelics", str(tmp_path / "docs.parquet"))
    check_invariants(proc, ledger, docs, manifest)
    assert [(d[C.STATUS], d[C.REASON], d[C.IMAGES_IN], d[C.IMAGES_KEPT]) for d in docs] == [
        (C.KEPT, None, 3, 2), (C.KEPT, None, 3, 1), (C.FAILED, "malformed_document", 0, 0),
        (C.DROPPED, "too_few_images", 0, 0)]
    assert docs[1][C.DETAIL] == "2 of 3 images removed (2 exact_duplicate)"
    got = [(r[C.DOCUMENT], r[C.POSITION], r[C.STATUS], r[C.REASON], r[C.CAPTION]) for r in ledger]
    assert got == [(0, 0, C.KEPT, None, WORDS), (0, 2, C.FAILED, "http_404", WORDS), (0, 3, C.KEPT, None, WORDS),
                   (1, 1, C.KEPT, None, WORDS), (1, 2, C.DROPPED, "exact_duplicate", WORDS),
                   (1, 3, C.DROPPED, "exact_duplicate", WORDS)]
