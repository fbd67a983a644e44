"""Ingest in tasks: units read in parallel, rows numbered as one reader would; the fingerprint
read once per file, a changed file still refused."""

from __future__ import annotations

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmcurate import ingest
from mmcurate.algos.parallel import SerialTasks
from mmcurate.engine.rundir import INGEST, RunDir
from mmcurate.jobs.ingest import fingerprint_input, ingest_input
from mmcurate.schemas.config import InputConfig


def pool(tmp_path):
    """Files of every format, a parquet file of many row groups, an empty one, broken rows."""
    urls = [f"http://a.test/{i}.jpg" for i in range(40)]
    pq.write_table(pa.table({"url": urls[:23], "caption": [f"c{i}" for i in range(23)]}), tmp_path / "a.parquet",
                   row_group_size=4)
    pq.write_table(pa.table({"url": pa.array([], pa.string()), "caption": pa.array([], pa.string())}), tmp_path / "b.parquet")
    (tmp_path / "c.csv").write_text("url,caption\n" + "".join(f"{u},csv {i}\n" for i, u in enumerate(urls[23:30]))
                                    + 'http://a.test/q.jpg,"never closed\nnot a url,x\n')
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"url": u, "caption": f"j {i}"}) + "\n" for i, u in enumerate(urls[30:])) + "{bad\n")
    return str(tmp_path / "*")


def serial_shards(pattern: str, size: int) -> list[bytes]:
    """The shards as one reader numbering every file in order writes them."""
    cfg = InputConfig(path=pattern, shard_size=size)
    out: list[bytes] = []

    def write(i, table):
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        out.append(sink.getvalue().to_pybytes())

    buf = ingest.ShardBuffer(size, write)
    for path in ingest.resolve_inputs(pattern):
        for raw in ingest.read_rows(path, cfg):
            buf.add(raw)
    buf.flush()
    return out


@pytest.mark.parametrize("size,rows_per_unit", [(5, 4), (3, 8), (100, 1)])
def test_units_in_tasks_give_the_one_reader_shards_byte_for_byte(tmp_path, size, rows_per_unit):
    (tmp_path / "in").mkdir()
    pattern = pool(tmp_path / "in")
    run_dir = RunDir.at(tmp_path / "run")
    cfg = InputConfig(path=pattern, shard_size=size)
    files = ingest.resolve_inputs(pattern)
    assert len(ingest.units(files, rows_per_unit)) > len(files)  # a.parquet cut by row groups
    seen = []
    counts = ingest_input(run_dir, cfg, files, rows_per_unit, SerialTasks, seen.append)
    expected = serial_shards(pattern, size)
    got = [run_dir.shard_file(INGEST, s).read_bytes() for s in range(counts["shards"])]
    assert got == expected and counts["rows"] == sum(s["rows_in"] for s in seen) == 23 + 9 + 11
    assert counts["failed"] == sum(s["failed"] for s in seen) >= 3
    assert not run_dir.ingest_pieces.exists()


def test_resume_reads_no_input_byte_and_a_changed_file_is_still_refused(tmp_path, monkeypatch):
    pattern = pool(tmp_path)
    files = ingest.resolve_inputs(pattern)
    fp, records = fingerprint_input(files, None)
    done = {"fingerprint_version": 2, "input_files": records}

    def no_reading(path):
        raise AssertionError(f"{path} read again")

    with monkeypatch.context() as m:
        m.setattr(ingest, "file_record", no_reading)
        assert fingerprint_input(files, done) == (fp, records)

    csv = tmp_path / "c.csv"
    os.utime(csv, ns=(csv.stat().st_atime_ns, csv.stat().st_mtime_ns + 10**9))  # touched: read again, same bytes
    again, fresh = fingerprint_input(files, done)
    assert again == fp and fresh != records
    text = csv.read_bytes()
    mtime = csv.stat().st_mtime_ns
    csv.write_bytes(text.replace(b"csv 1", b"csv 9"))  # same size, mtime put back: ctime still tells
    os.utime(csv, ns=(mtime, mtime))
    assert fingerprint_input(files, {"fingerprint_version": 2, "input_files": fresh})[0] != fp


def test_a_run_dir_from_before_the_records_keeps_its_fingerprint(tmp_path):
    pattern = pool(tmp_path)
    files = ingest.resolve_inputs(pattern)
    assert fingerprint_input(files, {"input_fingerprint": "x"}) == (ingest.fingerprint(files), None)
