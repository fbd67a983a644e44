"""Interleaved documents read into image rows and document rows: MMC4 and OBELICS, malformed ones
failed with a reason (never a crash), a document with no image still a row."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmcurate.ingest import ShardBuffer, read_documents, resolve_inputs
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.schemas.errors import ConfigError, InputError

WORDS = "a few words of text that make a paragraph long enough"


def cfg(fmt: str, path: str = "x.jsonl", **extra):
    return config_from_dict({"input": {"path": path, "format": fmt, **extra}}).input


def write_jsonl(path, docs: list) -> None:
    path.write_text("".join((d if isinstance(d, str) else json.dumps(d)) + "\n" for d in docs))


def test_mmc4_each_image_a_row_with_the_text_it_was_matched_to(tmp_path):
    doc = {"url": "https://site.example/post", "text_list": ["First sentence here.", WORDS],
           "image_info": [{"image_name": "a.jpg", "raw_url": "https://img.example/a.jpg", "matched_text_index": 1, "matched_sim": 0.31},
                          {"image_name": "b.jpg", "raw_url": "https://img.example/b.jpg", "matched_text_index": 0, "matched_sim": 0.27}]}
    write_jsonl(tmp_path / "d.jsonl", [doc])
    [got] = read_documents(tmp_path / "d.jsonl", cfg("mmc4"))
    v = got.values
    assert v[C.STATUS] == C.KEPT and v[C.URL] == "https://site.example/post" and v[C.IMAGES_IN] == 2
    assert v[C.TEXTS] == doc["text_list"] and v[C.TEXT_POSITIONS] == [0, 1]
    assert v[C.IMAGE_POSITIONS] == [0, 1] and v[C.IMAGE_TEXTS] == [1, 0]
    assert v[C.IMAGE_SIMILARITY] == pytest.approx([0.31, 0.27]) and v[C.WORDS] == 3 + len(WORDS.split())
    assert [(r.url, r.caption, r.document[C.POSITION]) for r in got.images] == [
        ("https://img.example/a.jpg", WORDS, 0), ("https://img.example/b.jpg", "First sentence here.", 1)]
    assert all(r.document[C.DOCUMENT_ID] == v[C.DOCUMENT_ID] and r.document[C.DOCUMENT] == 0 for r in got.images)


def test_obelics_caption_is_the_following_paragraph_else_the_preceding(tmp_path):
    doc = {"images": ["https://img.example/0.jpg", None, "https://img.example/2.jpg", None, "https://img.example/4.jpg"],
           "texts": [None, "after the first image", None, "the last paragraph", None],
           "general_metadata": json.dumps({"url": "https://site.example/article", "warc_filename": "x.warc.gz"})}
    pq.write_table(pa.Table.from_pylist([doc]), tmp_path / "d.parquet")
    [got] = read_documents(tmp_path / "d.parquet", cfg("obelics", "d.parquet"))
    v = got.values
    assert v[C.URL] == "https://site.example/article" and v[C.IMAGE_POSITIONS] == [0, 2, 4]
    assert v[C.TEXT_POSITIONS] == [1, 3] and v[C.IMAGE_TEXTS] == [1, 3, 3] and v[C.IMAGE_SIMILARITY] is None
    assert [r.caption for r in got.images] == ["after the first image", "the last paragraph", "the last paragraph"]


def test_malformed_documents_fail_with_a_reason_and_no_image_rows(tmp_path):
    docs = [
        "{not json",
        {"images": ["https://i.example/a.jpg"], "texts": [None, "x"]},  # unequal lists
        {"images": ["https://i.example/a.jpg"], "texts": ["both"]},  # an image and a text at one position
        {"images": [], "texts": []},  # nothing at all
        {"images": "https://i.example/a.jpg", "texts": []},  # not a list
        {"images": [None], "texts": ["only text, no image"]},  # fine: accounted for, with no image row
        [1, 2],  # a JSON array
    ]
    write_jsonl(tmp_path / "d.jsonl", docs)
    got = list(read_documents(tmp_path / "d.jsonl", cfg("obelics")))
    assert [(d.values[C.STATUS], d.values[C.REASON]) for d in got] == [
        (C.FAILED, "malformed_row"), (C.FAILED, "malformed_document"), (C.FAILED, "malformed_document"),
        (C.FAILED, "empty_document"), (C.FAILED, "malformed_document"), (C.KEPT, None), (C.FAILED, "malformed_row")]
    assert [d.values[C.DOCUMENT] for d in got] == list(range(7))
    assert all(not d.images for d in got) and got[1].values[C.DETAIL].startswith("line 2: images has 1 entries")
    assert len({d.values[C.DOCUMENT_ID] for d in got}) == 7


def test_a_bad_image_entry_fails_that_image_alone(tmp_path):
    doc = {"text_list": [WORDS], "image_info": [
        {"raw_url": "https://i.example/a.jpg", "matched_text_index": 0},
        {"raw_url": "https://i.example/b.jpg", "matched_text_index": 3},
        "not an object", {"matched_text_index": 0}]}
    write_jsonl(tmp_path / "d.jsonl", [doc])
    [got] = read_documents(tmp_path / "d.jsonl", cfg("mmc4"))
    rows = []
    buffer = ShardBuffer(100, lambda shard, table: rows.extend(table.to_pylist()), documents=True)
    for raw in got.images:
        buffer.add(raw)
    buffer.flush()
    assert [(r[C.STATUS], r[C.REASON], r[C.POSITION]) for r in rows] == [
        (C.KEPT, None, 0), (C.FAILED, "missing_caption", 1), (C.FAILED, "malformed_row", 2), (C.FAILED, "missing_url", 3)]
    assert len({r[C.UID] for r in rows}) == 4 and {r[C.DOCUMENT_ID] for r in rows} == {got.values[C.DOCUMENT_ID]}


def test_document_id_from_the_input_else_a_hash_of_url_and_content(tmp_path):
    a = {"id": "doc-7", "url": "https://s.example/1", "text_list": [WORDS], "image_info": []}
    b = {"url": "https://s.example/1", "text_list": [WORDS], "image_info": []}
    c = {"url": "https://s.example/1", "text_list": [WORDS + " more"], "image_info": []}
    write_jsonl(tmp_path / "d.jsonl", [a, b, b, c])
    ids = [d.values[C.DOCUMENT_ID] for d in read_documents(tmp_path / "d.jsonl", cfg("mmc4", id_col="id"))]
    assert ids[0] == "doc-7" and ids[1] == ids[2] != ids[3] and len(ids[1]) == 32
    hashed = [d.values[C.DOCUMENT_ID] for d in read_documents(tmp_path / "d.jsonl", cfg("mmc4"))]
    assert hashed[0] == hashed[1]  # without input.id_col: the same URL and content, the same id


def test_a_file_of_another_format_exits_2_naming_the_keys(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"url": "https://i.example/a.jpg", "caption": "a pair"}])
    with pytest.raises(InputError, match="input.format: mmc4 documents hold text_list and image_info.*keys found: caption, url"):
        list(read_documents(tmp_path / "d.jsonl", cfg("mmc4")))
    (tmp_path / "d.csv").write_text("url,caption\n")
    with pytest.raises(InputError, match="reads JSONL or parquet"):
        resolve_inputs(cfg("obelics", str(tmp_path / "d.csv")))


def test_config_keys():
    assert cfg("mmc4").documents and not cfg("mmc4").pool and not cfg("urls").documents
    with pytest.raises(ConfigError, match="input.id_col applies to input.format: mmc4 or obelics"):
        cfg("urls", id_col="id")
    docs = config_from_dict({"input": {"path": "x"}}).documents
    assert (docs.min_images, docs.min_words, docs.nsfw_drops_document) == (1, 10, True)
