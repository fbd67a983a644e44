"""A documents run end to end with an NSFW detector that flags: one MMC4 run from a loopback server,
the stand-in CLIP and the NSFW head `tests/filters/test_nsfw_head.py` trains on its embeddings
(triangles play the flagged class). A document with a flagged image among normal ones is dropped
whole; the run's own exports of documents (webdataset, mmc4) are, file for file, what `mmcurate
export` writes; a pairs run naming a document format is refused before it starts."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from mmcurate.demo import shapes
from mmcurate.demo.server import ImageServer, Route
from mmcurate.engine.rundir import RunDir
from mmcurate.jobs.status import run_status
from mmcurate.schemas import columns as C
from tests.conftest import run_cli
from tests.filters.test_nsfw_head import FLAGGED, head  # noqa: F401 - the head fixture, trained once here

pytestmark = pytest.mark.slow

WORDS = "enough words in this paragraph for the document rule to keep it"
# the pool test_nsfw_head's run checks image by image: its triangles flagged, the rest not
POOL = shapes.pairs(24, seed=515)
FLAGGED_AT = [i for i, p in enumerate(POOL) if p.shape == FLAGGED]
CLEAN = [i for i, p in enumerate(POOL) if p.shape != FLAGGED]


@pytest.fixture(scope="module")
def nsfw_run(shapes_clip, head, tmp_path_factory):  # noqa: F811 - the fixture imported above
    """Doc 0 kept (two clean images), doc 1 a flagged image between two clean ones, doc 2 kept
    with one of its two images a 404, doc 3 a broken line; exports webdataset, mmc4 and parquet."""
    model_dir, _ = shapes_clip
    tmp = tmp_path_factory.mktemp("nsfw-docs")
    routes = {f"/{i}.png": Route(shapes.png(p.image), content_type="image/png") for i, p in enumerate(POOL)}
    with ImageServer(routes) as server:
        def info(i: int) -> dict:
            return {"image_name": f"{i}.png", "raw_url": server.url(f"/{i}.png"), "matched_text_index": 0,
                    "matched_sim": 0.3}
        a, b, c, d, e = CLEAN[:5]
        docs = [{"url": "https://s.example/0", "text_list": [WORDS], "image_info": [info(a), info(b)]},
                {"url": "https://s.example/1", "text_list": [WORDS, "more"],
                 "image_info": [info(c), info(FLAGGED_AT[0]), info(d)]},
                {"url": "https://s.example/2", "text_list": [WORDS],
                 "image_info": [info(e), {**info(0), "raw_url": server.url("/missing.png")}]}]
        lines = [json.dumps(x) for x in docs] + ["{broken"]
        (tmp / "docs.jsonl").write_text("\n".join(lines) + "\n")
        config = {"input": {"path": str(tmp / "docs.jsonl"), "format": "mmc4", "shard_size": 3},
                  "download": {"allow_networks": ["127.0.0.1/32"], "retries": 0, "image_size": 64},
                  "dedup": {"exact": False, "phash": {"enabled": False}},
                  "clip": {"model": f"local-dir:{model_dir}", "min_score": None, "batch_size": 32},
                  "safety": {"toxicity": {"enabled": False}, "nsfw": {"model": "clip_head", "weights": str(head)}},
                  "privacy": {"faces": {"enabled": False}, "pii": {"enabled": False}},
                  "export": {"formats": ["webdataset", "mmc4", "parquet"]}}
        (tmp / "c.yaml").write_text(yaml.safe_dump(config))
        proc = run_cli("run", str(tmp / "c.yaml"), "--run-dir", str(tmp / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run", proc


def test_a_flagged_image_drops_its_document_whole(nsfw_run):
    run_dir, proc = nsfw_run
    docs = pq.read_table(run_dir / "documents.parquet").to_pylist()
    ledger = pq.read_table(run_dir / "ledger.parquet").to_pylist()
    assert [(d[C.STATUS], d[C.STAGE], d[C.REASON]) for d in docs] == [
        (C.KEPT, None, None), (C.DROPPED, "documents", "nsfw_document"), (C.KEPT, None, None),
        (C.FAILED, "ingest", "malformed_row")]
    assert "position 1 dropped as nsfw_image" in docs[1][C.DETAIL] and docs[1][C.IMAGES_IN] == 3
    # its images keep their own rows: the flagged one dropped by safety, the others kept (by the image stages)
    mine = [(r[C.POSITION], r[C.STATUS], r[C.STAGE], r[C.REASON]) for r in ledger if r[C.DOCUMENT] == 1]
    assert mine == [(0, C.KEPT, None, None), (1, C.DROPPED, "safety", "nsfw_image"), (2, C.KEPT, None, None)]
    assert [r[C.REASON] for r in ledger if r[C.DOCUMENT] == 2] == [None, "http_404"]
    # documents in = kept + dropped + failed, in documents.parquet, the manifest and the printed line
    manifest = json.loads((run_dir / "manifest.json").read_text())
    counts = {k: manifest["documents"][k] for k in ("documents", *C.STATUSES)}
    assert counts == {"documents": 4, C.KEPT: 2, C.DROPPED: 1, C.FAILED: 1} == {
        "documents": len(docs), **{s: sum(d[C.STATUS] == s for d in docs) for s in C.STATUSES}}
    # an auditor asking about a kept image of the dropped document is told what became of its document
    kept_image = next(r for r in ledger if r[C.DOCUMENT] == 1 and r[C.STATUS] == C.KEPT)
    said = run_cli("audit", str(run_dir), "--explain", kept_image[C.UID])
    assert said.returncode == 0, said.stderr[-2000:]
    assert (f"document: 1 (id {docs[1][C.DOCUMENT_ID]}), image at position {kept_image[C.POSITION]}: dropped by "
            f"documents: nsfw_document") in said.stdout
    as_csv = run_cli("audit", str(run_dir), "--explain", kept_image[C.UID], "--format", "csv").stdout
    assert any(line.split(",")[2] == "document" and "nsfw_document" in line for line in as_csv.splitlines())
    # status: the document exports are made whole, once; they are done, not shards pending
    status = {s["stage"]: s for s in run_status(RunDir.at(str(run_dir)))["stages"]}
    assert [(status[f"export-{f}"]["status"], status[f"export-{f}"]["rows_in"]) for f in ("webdataset", "mmc4")] == [
        ("done", 2), ("done", 2)]
    assert "documents: 4 = 2 kept + 1 dropped + 1 failed" in proc.stdout
    # parquet stays per image: the kept images of the documents kept, and those of the one dropped
    exported = [r for f in sorted((run_dir / "shards" / "parquet").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert sorted((r[C.DOCUMENT], r[C.POSITION]) for r in exported) == [(0, 0), (0, 1), (1, 0), (1, 2), (2, 0)]


def export(run_dir, out, fmt):
    proc = run_cli("export", str(run_dir), "--format", fmt, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_the_runs_own_document_exports_are_those_of_mmcurate_export(nsfw_run, tmp_path):
    import webdataset as wds

    run_dir, _ = nsfw_run
    own = run_dir / "shards" / "webdataset"
    samples = list(wds.WebDataset([str(p) for p in sorted(own.glob("*.tar"))], shardshuffle=False))
    assert [s["__key__"] for s in samples] == [C.sample_key(0), C.sample_key(2)]  # one per kept document, not doc 1
    for sample in samples:
        meta = json.loads(sample["json"])
        named = [n for n in meta["images"] if n]
        assert meta["texts"].count(WORDS) == 1 and len(named) == {0: 2, 2: 1}[meta[C.DOCUMENT]]
        for name in named:  # each image the structure names is a member of the same sample
            assert Image.open(io.BytesIO(sample[name])).size[0] > 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["exports"]["webdataset"]["rows"] == manifest["exports"]["mmc4"]["rows"] == 2
    assert (run_dir / "stages" / "export-webdataset" / "done.json").exists()  # made in one piece, resumable

    export(run_dir, tmp_path / "wds", "webdataset")
    theirs = {p.name: p.read_bytes() for p in sorted((tmp_path / "wds").glob("*.tar"))}
    assert {p.name: p.read_bytes() for p in sorted(own.glob("*.tar"))} == theirs
    export(run_dir, tmp_path / "mmc4", "mmc4")  # the document dropped is in neither
    lines = [json.loads(x) for p in sorted((tmp_path / "mmc4").glob("*.jsonl")) for x in p.read_text().splitlines()]
    assert [d["url"] for d in lines] == ["https://s.example/0", "https://s.example/2"]
    mine = run_dir / "shards" / "mmc4"
    assert {p.name: p.read_bytes() for p in sorted(mine.glob("*.jsonl"))} == {
        p.name: p.read_bytes() for p in sorted((tmp_path / "mmc4").glob("*.jsonl"))}
    assert sorted(p.name for p in (mine / "images").iterdir()) == sorted(p.name for p in (tmp_path / "mmc4" / "images").iterdir())


def test_a_pairs_run_naming_a_document_format_exits_2(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"input": {"path": str(tmp_path / "urls.csv")},
                                                     "export": {"formats": ["parquet", "mmc4"]}}))
    proc = run_cli("run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2 and "export.formats: mmc4 writes interleaved documents" in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()
