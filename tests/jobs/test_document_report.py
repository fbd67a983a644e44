"""A documents run in the report (funnel, reasons, images and words per document, examples of the
documents removed), in `audit` (a document explained with its images; a document rule's reason
lists its documents) and in `status`: one MMC4 run from a loopback server, read every way."""

from __future__ import annotations

import json

import pytest

from mmcurate.engine.rundir import RunDir
from mmcurate.jobs.document_audit import explain_document, wants_documents
from mmcurate.jobs.status import run_status
from mmcurate.schemas import columns as C
from mmcurate.schemas.errors import ConfigError
from tests.conftest import run_cli
from tests.jobs.test_documents import WORDS, run, serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def docs_run(tmp_path_factory):
    """(run dir, documents.parquet's rows, ledger rows, manifest) of 5 documents: one keeping 2 of its
    3 images (a 404), one of too few words, one with no image (too few images), a malformed line,
    one kept whole."""
    tmp = tmp_path_factory.mktemp("docreport")
    with serve() as server:
        def info(i, path, text=0):
            return {"image_name": f"{i}.jpg", "raw_url": server.url(path), "matched_text_index": text, "matched_sim": 0.3}
        lines = [
            json.dumps({"url": "https://s.example/a", "text_list": [WORDS, "second"],
                        "image_info": [info(0, "/img/0.jpg"), info(1, "/missing.jpg", 1), info(2, "/img/1.jpg")]}),
            json.dumps({"url": "https://s.example/b", "text_list": ["tiny"], "image_info": [info(0, "/img/2.jpg")]}),
            json.dumps({"url": "https://s.example/c", "text_list": [WORDS], "image_info": []}),
            "{broken",
            json.dumps({"url": "https://s.example/e", "text_list": [WORDS + " too"], "image_info": [info(0, "/img/3.jpg")]}),
        ]
        (tmp / "docs.jsonl").write_text("\n".join(lines) + "\n")
        _, ledger, docs, manifest = run(tmp, "mmc4", str(tmp / "docs.jsonl"))
    return tmp / "run", docs, ledger, manifest


def cli(*args: str) -> str:
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_report_has_the_documents_funnel_histograms_and_examples(docs_run):
    run_dir, docs, _, manifest = docs_run
    assert [(d[C.STATUS], d[C.REASON]) for d in docs] == [
        (C.KEPT, None), (C.DROPPED, "too_few_words"), (C.DROPPED, "too_few_images"), (C.FAILED, "malformed_row"),
        (C.KEPT, None)]
    report = json.loads((run_dir / "report" / "report.json").read_text())
    section = report["document_report"]
    counts = {"documents": 5, "kept": 2, "dropped": 2, "failed": 1}
    assert {k: section[k] for k in counts} == {k: manifest["documents"][k] for k in counts} == counts
    assert section["invariant_holds"]
    assert section["funnel"] == [{"stage": "input", "documents": 5}, {"stage": "ingest", "documents": 4},
                                 {"stage": "documents", "documents": 2}]
    assert sorted((r[C.STAGE], r[C.STATUS], r[C.REASON], r["documents"]) for r in section["reasons"]) == [
        ("documents", C.DROPPED, "too_few_images", 1), ("documents", C.DROPPED, "too_few_words", 1),
        ("ingest", C.FAILED, "malformed_row", 1)]
    hists = {h["score"]: h for h in section["histograms"]}
    assert list(hists) == [C.IMAGES_IN, C.IMAGES_KEPT, C.WORDS, C.WORDS_KEPT]
    for h in hists.values():  # the documents ingest read, in whole-number bins
        assert sum(h["counts"]) == h["rows"] == 4 and len(h["edges"]) == len(h["counts"]) + 1
    images_in = hists[C.IMAGES_IN]
    assert images_in["edges"][:5] == [0, 1, 2, 3, 4] and images_in["counts"] == [1, 2, 0, 1]  # 3, 1, 0, 1 images
    assert hists[C.IMAGES_KEPT]["threshold"] == 1 and hists[C.WORDS_KEPT]["threshold"] == 10  # the rules' minimums
    assert hists[C.WORDS]["threshold"] is None  # the words before the paragraph rules: not what min_words cuts on
    examples = section["examples"]
    assert set(examples) == {"too_few_words", "too_few_images", "malformed_row"}
    few = examples["too_few_words"][0]
    assert (few[C.DOCUMENT], few[C.DOCUMENT_ID], few[C.URL]) == (1, docs[1][C.DOCUMENT_ID], "https://s.example/b")
    assert few[C.DETAIL] == docs[1][C.DETAIL] and "documents.min_words" in few[C.DETAIL]
    assert examples["malformed_row"][0][C.STATUS] == C.FAILED and "line 4" in examples["malformed_row"][0][C.DETAIL]

    page = (run_dir / "report" / "index.html").read_text()
    assert "<h2>Documents</h2>" in page and "5 input documents = 2 kept + 2 dropped + 1 failed" in page
    assert "documents invariant <span class=\"ok\">holds</span>" in page
    assert "documents: too_few_words" in page and docs[1][C.DOCUMENT_ID] in page
    assert "images_kept (4 documents)" in page and "words_kept (4 documents)" in page


def test_audit_explains_a_document_with_its_images(docs_run):
    run_dir, docs, ledger, _ = docs_run
    doc = docs[0]
    out = cli("audit", str(run_dir), "--explain", doc[C.DOCUMENT_ID])
    assert f"document 0  id {doc[C.DOCUMENT_ID]}  KEPT" in out and "1 of 3 images removed (1 http_404)" in out
    assert "https://s.example/a" in out and "docs.jsonl:1" in out
    for r in (r for r in ledger if r[C.DOCUMENT] == 0):
        assert f"image at position {r[C.POSITION]}: uid {r[C.UID]}  row {r[C.ROW]}  {r[C.STATUS]}" in out
    assert "failed by download: http_404" in out

    by_number = json.loads(cli("audit", str(run_dir), "--explain", "1", "--format", "json"))
    assert [(d[C.DOCUMENT], d[C.REASON], d[C.WORDS]) for d in by_number] == [(1, "too_few_words", 1)]
    assert [(i[C.POSITION], i[C.STATUS]) for i in by_number[0]["images"]] == [(0, C.KEPT)]

    where = RunDir.at(str(run_dir))  # the rest in-process: the same calls, without a command's start-up
    assert [(d[C.DOCUMENT], d["images"]) for d in explain_document(where, docs[2][C.DOCUMENT_ID][:10])] == [(2, [])]
    uid = next(r[C.UID] for r in ledger if r[C.REASON] == "http_404")  # an image's uid (or its start): as before
    assert explain_document(where, uid) is None and explain_document(where, uid[:8]) is None
    with pytest.raises(ConfigError, match="--explain no-such-thing: no document has this id or number"):
        explain_document(where, "no-such-thing")


def test_audit_lists_the_documents_a_document_rule_removed(docs_run):
    run_dir, docs, _, _ = docs_run
    found = json.loads(cli("audit", str(run_dir), "--reason", "too_few_words", "--format", "json"))
    assert [(d[C.DOCUMENT_ID], d[C.STAGE], d[C.URL]) for d in found] == [(docs[1][C.DOCUMENT_ID], "documents",
                                                                          "https://s.example/b")]
    table = cli("audit", str(run_dir), "--stage", "documents", "--limit", "1")
    assert "too_few_words" in table and "1 of 2 documents shown" in table
    where = RunDir.at(str(run_dir))
    assert not wants_documents(where, None, "http_404") and not wants_documents(where, "download", None)  # images'
    assert wants_documents(where, "ingest", "malformed_row")  # a document's, which no image row has
    with pytest.raises(ConfigError, match="no_such_reason: no stage of this run gives it.*too_few_words"):
        wants_documents(where, None, "no_such_reason")  # the documents' reasons named too


def test_status_prints_the_documents(docs_run):
    run_dir, _, _, manifest = docs_run
    assert "documents: 5 = 2 kept + 2 dropped + 1 failed" in cli("status", str(run_dir))
    status = run_status(RunDir.at(str(run_dir)))
    assert status["documents"] == manifest["documents"]
    # the documents step: its shards the files of documents (2 of 3 here), its rows documents
    step = next(s for s in status["stages"] if s["stage"] == "documents")
    assert (step["status"], step["shards_total"], step["rows_in"], step[C.KEPT]) == ("done", 2, 5, 2)
    assert [s["stage"] for s in status["stages"]].index("documents") == len(status["stages"]) - 2  # before the export
