"""Ingest: every input row becomes a shard row; unusable ones fail with a reason, never vanish."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmcurate import ingest
from mmcurate.ingest import readers
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import InputConfig
from mmcurate.schemas.errors import InputError


def collect(path_glob: str, shard_size: int = 3, **cols) -> list[pa.Table]:
    cfg = InputConfig(path=path_glob, shard_size=shard_size, **cols)
    shards: list[pa.Table] = []
    buf = ingest.ShardBuffer(shard_size, lambda i, t: shards.append(t))
    for path in ingest.resolve_inputs(path_glob):
        for raw in ingest.read_rows(path, cfg):
            buf.add(raw)
    buf.flush()
    return shards


def rows_of(shards: list[pa.Table]) -> list[dict]:
    return pa.concat_tables(shards).to_pylist()


def test_every_format_and_glob_in_sorted_order(tmp_path):
    pq.write_table(pa.table({"url": ["http://a.test/1.jpg"], "caption": ["one"]}), tmp_path / "a.parquet")
    (tmp_path / "b.csv").write_text('url,caption\nhttp://a.test/2.jpg,"two, with comma"\n')
    (tmp_path / "c.tsv").write_text('url\tcaption\nhttp://a.test/3.jpg\tthree "quoted"\n')
    (tmp_path / "d.jsonl").write_text(json.dumps({"url": "http://a.test/4.jpg", "caption": "four"}) + "\n")
    with gzip.open(tmp_path / "e.jsonl.gz", "wt") as f:
        f.write(json.dumps({"url": "http://a.test/5.jpg", "caption": "five"}) + "\n")
    rows = rows_of(collect(str(tmp_path / "*")))
    assert [r[C.CAPTION] for r in rows] == ["one", "two, with comma", 'three "quoted"', "four", "five"]
    assert [r[C.ROW] for r in rows] == [0, 1, 2, 3, 4]
    assert all(r[C.STATUS] == C.KEPT for r in rows)
    assert rows[1][C.SOURCE].endswith("b.csv") and rows[1][C.SOURCE_LINE] == 2


def test_shards_of_shard_size(tmp_path):
    n = 10
    pq.write_table(pa.table({"url": [f"http://a.test/{i}.jpg" for i in range(n)], "caption": ["c"] * n}), tmp_path / "x.parquet")
    shards = collect(str(tmp_path / "x.parquet"), shard_size=4)
    assert [t.num_rows for t in shards] == [4, 4, 2]


def test_uid_is_a_stable_hash_of_url_and_caption():
    assert ingest.uid_of("http://a/1.jpg", "x") == ingest.uid_of("http://a/1.jpg", "x")
    assert ingest.uid_of("http://a/1.jpg", "x") != ingest.uid_of("http://a/1.jpg", "y")
    assert len(ingest.uid_of("u", None)) == 32


def test_unusable_rows_fail_with_reasons(tmp_path):
    lines = [
        {"url": "http://ok.test/a.jpg", "caption": "fine"},
        {"url": "", "caption": "no url"},
        {"url": None, "caption": "null url"},
        {"url": "ftp://x.test/a.jpg", "caption": "ftp"},
        {"url": "file:///etc/passwd", "caption": "file"},
        {"url": "data:image/png;base64,AAAA", "caption": "data"},
        {"url": "gopher://x.test/", "caption": "gopher"},
        {"url": "http://[::1", "caption": "bad ipv6"},
        {"url": "http:///nohost.jpg", "caption": "no host"},
        {"url": "http://a b.test/x.jpg", "caption": "space"},
        {"url": "http://u:p@x.test/a.jpg", "caption": "creds"},
        {"url": "http://x.test:99999/a.jpg", "caption": "port"},
        {"url": "http://x.test/a.jpg", "caption": 42},
        {"url": "http://x.test/b.jpg", "caption": None},
        {"url": 7, "caption": "int url"},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\nnot json at all\n[1, 2]\n"
    (tmp_path / "in.jsonl").write_text(text)
    rows = rows_of(collect(str(tmp_path / "in.jsonl")))
    reasons = [r[C.REASON] for r in rows]
    assert reasons == [
        None, "missing_url", "missing_url", "unsupported_scheme", "unsupported_scheme", "unsupported_scheme",
        "unsupported_scheme", "bad_url", "bad_url", "bad_url", "credentials_in_url", "bad_url",
        "caption_not_text", "missing_caption", "bad_url", "malformed_row", "malformed_row",
    ]
    assert len(rows) == len(lines) + 2  # nothing skipped
    assert all(r[C.STATUS] == C.FAILED for r in rows[1:])
    assert rows[15][C.DETAIL].startswith("line 16: not JSON")


def test_credentials_are_refused_and_stored_masked(tmp_path):
    lines = [  # (url, stored as), each with a secret of its own
        ("http://user:s3cret-a@x.test/a.jpg", "http://user:***@x.test/a.jpg"),
        ("https://user:p%40ss-b@x.test/b.jpg", "https://user:***@x.test/b.jpg"),
        ("http://:s3cret-c@x.test/c.jpg", "http://:***@x.test/c.jpg"),
        ("http://user:s3cret-d@x.test:8080/d.jpg?at=e@f", "http://user:***@x.test:8080/d.jpg?at=e@f"),
        ("http://user:s3cret@e@x.test/e.jpg", "http://user:***@x.test/e.jpg"),  # the last @ ends the credentials
        ("https://t0ken-f@x.test/f.jpg", "https://***@x.test/f.jpg"),  # a user alone may be a token
        ("http://user:s3cret-g@x.test:99999/g.jpg", "http://user:***@x.test:99999/g.jpg"),  # refused for its port
        ("ftp://user:s3cret-h@x.test/h.jpg", "ftp://user:***@x.test/h.jpg"),  # refused for its scheme
        ("http://x.test/i.jpg?u=user:s3cret@x", "http://x.test/i.jpg?u=user:s3cret@x"),  # not credentials
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"url": u, "caption": "c"}) + "\n" for u, _ in lines))
    shards = collect(str(tmp_path / "in.jsonl"))
    rows = rows_of(shards)
    assert [r[C.URL] for r in rows] == [shown for _, shown in lines]
    assert [r[C.REASON] for r in rows] == ["credentials_in_url"] * 6 + ["bad_url", "unsupported_scheme", None]
    assert rows[-1][C.UID] == ingest.uid_of(lines[-1][0], "c")  # other rows' uids are what they were
    assert rows[0][C.UID] == ingest.uid_of(lines[0][1], "c")  # a hash of the masked url: nothing to guess at
    for table, name in ((t, f"{i}.parquet") for i, t in enumerate(shards)):
        pq.write_table(table, tmp_path / name, compression="none")
        stored = (tmp_path / name).read_bytes() + json.dumps(table.to_pylist()).encode()
        assert not any(secret in stored for secret in (b"s3cret-", b"p%40ss", b"p@ss", b"t0ken"))


def test_malformed_csv_rows_and_bad_utf8_are_ledger_rows(tmp_path):
    data = b"url,caption\nhttp://x.test/1.jpg,good\nhttp://x.test/2.jpg,too,many\nhttp://x.test/3.jpg,caf\xe9\n\nhttp://x.test/4.jpg,\n"
    (tmp_path / "in.csv").write_bytes(data)
    rows = rows_of(collect(str(tmp_path / "in.csv")))
    assert [r[C.REASON] for r in rows] == [None, "malformed_row", "not_utf8", "missing_caption"]
    assert [r[C.SOURCE_LINE] for r in rows] == [2, 3, 4, 6]
    assert "expected 2 fields, got 3" in rows[1][C.DETAIL]
    assert rows[3][C.CAPTION] == ""  # kept as given in the ledger; an empty caption pairs with nothing


def test_input_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="no file matches"):
        ingest.resolve_inputs(str(tmp_path / "*.parquet"))
    (tmp_path / "x.csv").write_text("link,caption\nhttp://a/1.jpg,x\n")
    with pytest.raises(InputError, match=r"input.url_col: column 'url' not in .*x.csv \(columns found: link, caption\)"):
        collect(str(tmp_path / "x.csv"))
    (tmp_path / "y.parquet").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable parquet"):
        collect(str(tmp_path / "y.parquet"))


def test_an_unclosed_quote_does_not_swallow_the_rows_after_it(tmp_path):
    # by the letter of CSV, a quote that never closes (or closes only at a later row's quote) makes
    # every line after it part of one caption: those rows would vanish into a row that is kept
    (tmp_path / "a.csv").write_text(
        'url,caption\n'
        'http://a.test/1.jpg,"opens and never closes\n'
        'http://a.test/2.jpg,two\n'
        'http://a.test/3.jpg,"three, quoted"\n'
        'http://a.test/4.jpg,"a caption\nover two lines"\n'
        'http://a.test/5.jpg,"unclosed at the end\n'
        'of the file\n')
    rows = rows_of(collect(str(tmp_path / "a.csv"), shard_size=10))
    got = [(r[C.SOURCE_LINE], r[C.REASON], r[C.CAPTION]) for r in rows]
    assert got == [
        (2, "malformed_row", None),
        (3, None, "two"),
        (4, None, "three, quoted"),
        (5, None, "a caption\nover two lines"),  # a real multi-line caption stays one row
        (7, "malformed_row", None),
        (8, "malformed_row", None),  # a line of its own again, not a row: failed, still accounted for
    ]
    assert "line 2: a quoted field opens here and runs into line 3" in rows[0][C.DETAIL]
    assert "never closes" in rows[4][C.DETAIL]


def test_hostile_jsonl_lines_fail_alone_and_a_bom_is_no_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_FIELD_BYTES", 16_384)  # 64 MiB in use: a small limit keeps the test small
    ok = json.dumps({"url": "http://a.test/1.jpg", "caption": "one"}).encode()
    (tmp_path / "a.jsonl").write_bytes(
        b"\xef\xbb\xbf" + ok + b"\n"  # a byte-order mark, as Windows tools write one
        + b"[" * 5_000 + b"]" * 5_000 + b"\n"  # nested past Python's recursion limit
        + json.dumps({"url": "http://a.test/2.jpg", "caption": "x" * 20_000}).encode() + b"\n"  # over the limit
        + b"[1, 2]\n" + ok.replace(b"one", b"after") + b"\n")
    rows = rows_of(collect(str(tmp_path / "a.jsonl"), shard_size=10))
    assert [(r[C.SOURCE_LINE], r[C.REASON]) for r in rows] == [
        (1, None), (2, "malformed_row"), (3, "malformed_row"), (4, "malformed_row"), (5, None)]
    assert rows[0][C.CAPTION] == "one" and rows[4][C.CAPTION] == "after"
    assert [r[C.DETAIL].split(": ", 1)[1] for r in rows[1:4]] == [
        "JSON nested too deeply", "longer than 16,384 bytes (not read)", "a JSON array, not an object"]


def test_parquet_binary_columns_read_as_text(tmp_path):
    # Spark and other writers often store strings as parquet `binary`
    pq.write_table(pa.table({"url": pa.array([b"http://a.test/1.jpg", b"http://a.test/2.jpg"], pa.binary()),
                             "caption": pa.array([b"caf\xc3\xa9 au lait", b"caf\xe9"], pa.binary())}), tmp_path / "b.parquet")
    rows = rows_of(collect(str(tmp_path / "b.parquet")))
    assert rows[0][C.CAPTION] == "café au lait" and rows[0][C.STATUS] == C.KEPT
    assert rows[1][C.REASON] == "not_utf8"  # invalid UTF-8, as in a CSV or JSONL file


def test_an_over_long_csv_line_fails_alone_without_being_held(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_FIELD_BYTES", 200)  # 64 MiB in use: a small limit keeps the test small
    (tmp_path / "a.csv").write_text(
        'url,caption\n'
        'http://a.test/1.jpg,one\n'
        f'http://a.test/2.jpg,{"x" * 5000}\n'  # one line over the limit
        'http://a.test/3.jpg,"a caption quoted over\n'
        'http://a.test/4.jpg,four\n'
        f'{"y" * 5000}"\n'  # ... that runs into a line over the limit
        'http://a.test/5.jpg,five\n')
    rows = rows_of(collect(str(tmp_path / "a.csv"), shard_size=10))
    assert [(r[C.SOURCE_LINE], r[C.REASON], r[C.CAPTION]) for r in rows] == [
        (2, None, "one"), (3, "malformed_row", None), (4, "malformed_row", None), (5, None, "four"),
        (6, "malformed_row", None), (7, None, "five")]  # in line order, every line accounted for
    assert rows[1][C.DETAIL] == "line 3: longer than 200 characters (not read)"
    assert "runs into a line longer than 200" in rows[2][C.DETAIL] and rows[4][C.DETAIL].startswith("line 6: longer")


def test_a_jsonl_without_the_keys_is_refused_as_a_csv_without_the_columns(tmp_path):
    (tmp_path / "in.jsonl").write_text("not json\n" + "\n".join(json.dumps({"link": f"http://x.test/{i}.jpg", "text": "t"})
                                                         for i in range(5)) + "\n")
    with pytest.raises(InputError, match=r"input.url_col: key 'url' in none of the first objects of .*in.jsonl "
                                         r"\(keys found: link, text\)"):
        collect(str(tmp_path / "in.jsonl"))
    assert len(rows_of(collect(str(tmp_path / "in.jsonl"), url_col="link", caption_col="text"))) == 6
    # one object holding each key is enough: the others are rows with a missing field, as before
    (tmp_path / "in.jsonl").write_text(json.dumps({"url": "http://x.test/a.jpg"}) + "\n"
                                       + json.dumps({"url": "http://x.test/b.jpg", "caption": "b"}) + "\n")
    assert [r[C.REASON] for r in rows_of(collect(str(tmp_path / "in.jsonl")))] == ["missing_caption", None]
