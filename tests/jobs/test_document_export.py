"""Exports of a documents run, one record per kept document, each read back by its own client:
MMC4 JSONL (json, MMC4's field names, the images beside it), an OBELICS-style `datasets` folder
(`load_from_disk`), webdataset with one sample per document (webdataset's reader). A pairs run
refuses them."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from mmcurate.schemas import columns as C
from tests.conftest import run_cli
from tests.jobs.test_documents import WORDS, run, serve

MMC4_FIELDS = {"image_name", "raw_url", "matched_text_index", "matched_sim"}


@pytest.fixture(scope="module")
def mmc4_run(tmp_path_factory):
    """An MMC4 run: doc 0 kept with images 0, 2 (1 a 404), doc 1 kept with image 0 (1 a duplicate),
    doc 2 dropped (too few words), doc 3 kept with image 1 (0 has no caption)."""
    tmp = tmp_path_factory.mktemp("docs")
    with serve() as server:
        def info(i, path, text=0):
            return {"image_name": f"{i}.jpg", "raw_url": server.url(path), "matched_text_index": text, "matched_sim": 0.3}
        docs = [
            {"url": "https://s.example/0", "text_list": [WORDS, "second"],
             "image_info": [info(0, "/img/0.jpg"), info(1, "/missing.jpg", 1), info(2, "/img/1.jpg", 1)]},
            {"url": "https://s.example/1", "text_list": [WORDS], "image_info": [info(0, "/img/2.jpg"), info(1, "/copy/2.jpg")]},
            {"url": "https://s.example/2", "text_list": ["tiny"], "image_info": [info(0, "/img/3.jpg")]},
            {"url": "https://s.example/3", "text_list": ["first", WORDS],
             "image_info": [info(0, "/img/4.jpg", 9), info(1, "/img/5.jpg", 1)]},
        ]
        (tmp / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        _, ledger, documents, _ = run(tmp, "mmc4", str(tmp / "docs.jsonl"))
    assert [d[C.STATUS] for d in documents] == [C.KEPT, C.KEPT, C.DROPPED, C.KEPT]
    return tmp / "run", {(r[C.DOCUMENT], r[C.POSITION]): r for r in ledger}


def export(run_dir, out, fmt, *more):
    proc = run_cli("export", str(run_dir), "--format", fmt, "--out", str(out), *more)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_jsonl(out):
    return [json.loads(line) for f in sorted(out.glob("*.jsonl")) for line in f.read_text().splitlines()]


@pytest.mark.slow
def test_mmc4_export(mmc4_run, tmp_path):
    run_dir, ledger = mmc4_run
    proc = export(run_dir, tmp_path / "mmc4", "mmc4")
    assert "exported 3 documents as mmc4" in proc.stdout
    docs = read_jsonl(tmp_path / "mmc4")
    assert [d["url"] for d in docs] == ["https://s.example/0", "https://s.example/1", "https://s.example/3"]
    assert [d["text_list"] for d in docs] == [[WORDS, "second"], [WORDS], ["first", WORDS]]  # texts whole
    for doc in docs:
        assert all(set(i) == MMC4_FIELDS for i in doc["image_info"])
    kept = [[(i["raw_url"].rsplit("/", 2)[-2:], i["matched_text_index"], i["matched_sim"]) for i in d["image_info"]]
            for d in docs]
    assert kept == [[(["img", "0.jpg"], 0, pytest.approx(0.3)), (["img", "1.jpg"], 1, pytest.approx(0.3))],
                    [(["img", "2.jpg"], 0, pytest.approx(0.3))], [(["img", "5.jpg"], 1, pytest.approx(0.3))]]
    for doc, number, positions in zip(docs, (0, 1, 3), [(0, 2), (0,), (1,)]):
        rows = [ledger[(number, p)] for p in positions]
        names = [i["image_name"] for i in doc["image_info"]]
        assert names == [f"{C.sample_key(r[C.ROW])}.jpg" for r in rows]
        for name in names:  # the stored image, written beside the JSONL
            assert Image.open(tmp_path / "mmc4" / "images" / name).size[0] > 0

    export(run_dir, tmp_path / "small", "mmc4", "--samples-per-shard", "2")
    assert sorted(p.name for p in (tmp_path / "small").glob("*.jsonl")) == ["000000.jsonl", "000001.jsonl"]
    assert read_jsonl(tmp_path / "small") == docs

    export(run_dir, tmp_path / "cut", "mmc4", "--where", "position = 0")  # doc 3 keeps no image of the cut
    cut = read_jsonl(tmp_path / "cut")
    assert [(d["url"], len(d["image_info"])) for d in cut] == [("https://s.example/0", 1), ("https://s.example/1", 1)]


@pytest.mark.slow
def test_obelics_export(mmc4_run, tmp_path):
    import datasets

    run_dir, _ = mmc4_run
    proc = export(run_dir, tmp_path / "obelics", "obelics")
    assert "exported 3 documents as obelics" in proc.stdout
    ds = datasets.load_from_disk(str(tmp_path / "obelics"))
    assert isinstance(ds.features["images"].feature, datasets.Image) and ds.num_rows == 3
    assert [json.loads(m)["url"] for m in ds["general_metadata"]] == [
        "https://s.example/0", "https://s.example/1", "https://s.example/3"]
    # each image before the sentence it was matched to: image 0, text 0, image 2, text 1 (image 1 removed)
    assert ds[0]["texts"] == [None, WORDS, None, "second"]
    assert [im is None for im in ds[0]["images"]] == [False, True, False, True]
    assert ds[0]["images"][0].size[0] > 0
    assert ds[2]["texts"] == ["first", None, WORDS] and ds[2]["images"][1] is not None
    assert all((t is None) != (i is None) for row in ds for t, i in zip(row["texts"], row["images"]))


@pytest.mark.slow
def test_webdataset_export_one_sample_per_document(mmc4_run, tmp_path):
    import webdataset as wds

    run_dir, _ = mmc4_run
    export(run_dir, tmp_path / "wds", "webdataset")
    samples = list(wds.WebDataset([str(p) for p in sorted((tmp_path / "wds").glob("*.tar"))], shardshuffle=False))
    assert [s["__key__"] for s in samples] == [C.sample_key(n) for n in (0, 1, 3)]
    first = json.loads(samples[0]["json"])
    assert first["texts"] == [None, WORDS, None, "second"] and first["images"] == ["0000.jpg", None, "0002.jpg", None]
    for sample in samples:  # every image the structure names is a member of the same sample
        meta = json.loads(sample["json"])
        for name in filter(None, meta["images"]):
            assert Image.open(io.BytesIO(sample[name])).size[0] > 0


@pytest.mark.slow
def test_an_obelics_run_round_trips(tmp_path):
    """OBELICS in, OBELICS out: the same aligned lists, less the images the run removed (a 404, a
    duplicate), whose positions go; the texts stay where they were."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    with serve() as server:
        def doc(url, items):
            return {"images": [server.url(x[4:]) if x.startswith("img:") else None for x in items],
                    "texts": [None if x.startswith("img:") else x for x in items],
                    "general_metadata": json.dumps({"url": url})}
        docs_in = [doc("https://s.example/a", ["img:/img/0.jpg", WORDS, "img:/missing.jpg", "img:/img/1.jpg"]),
                   doc("https://s.example/b", [WORDS, "img:/img/2.jpg", "img:/img/0.jpg", "after"]),
                   doc("https://s.example/c", ["tiny", "img:/img/3.jpg"])]
        pq.write_table(pa.Table.from_pylist(docs_in), tmp_path / "docs.parquet")
        run(tmp_path, "obelics", str(tmp_path / "docs.parquet"))
    export(tmp_path / "run", tmp_path / "obelics", "obelics", "--samples-per-shard", "1")
    assert len(list((tmp_path / "obelics").glob("data-*.arrow"))) == 2
    ds = datasets.load_from_disk(str(tmp_path / "obelics"))
    assert ds["texts"] == [[None, WORDS, None], [WORDS, None, "after"]]
    assert [[im is not None for im in row] for row in ds["images"]] == [[True, False, True], [False, True, False]]
    assert [json.loads(m)["url"] for m in ds["general_metadata"]] == ["https://s.example/a", "https://s.example/b"]

    export(tmp_path / "run", tmp_path / "mmc4", "mmc4")
    lines = read_jsonl(tmp_path / "mmc4")
    assert [d["text_list"] for d in lines] == [[WORDS], [WORDS, "after"]]
    assert [[(i["matched_text_index"], i["matched_sim"]) for i in d["image_info"]] for d in lines] == [
        [(0, None), (0, None)], [(1, None)]]  # each image's paragraph: the one after it, else the one before


def test_a_pairs_run_exits_2_on_document_formats(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text(json.dumps({"status": "finished", "config": {"input": {"path": "x.csv"}},
                                                       "stages": []}))
    proc = run_cli("export", str(run_dir), "--format", "mmc4", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "image-text pairs" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
