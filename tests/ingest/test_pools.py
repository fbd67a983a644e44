"""Pools already downloaded, read at ingest: every tar member, parquet row and image accounted for."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pytest

from mmcurate import ingest
from mmcurate.ingest import pools
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import InputConfig
from mmcurate.schemas.errors import InputError
from tests.conftest import make_image


def write_tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def sample(key: str, i: int, uid: str | None = None) -> list[tuple[str, bytes]]:
    meta = {"key": key, "url": f"http://pool.test/{i}.jpg", "original_width": 960, "original_height": 720}
    if uid:
        meta["uid"] = uid
    return [(f"{key}.jpg", make_image(i)), (f"{key}.txt", f"picture {i}".encode()), (f"{key}.json", json.dumps(meta).encode())]


def ingested(cfg: InputConfig) -> list[dict]:
    """The pool's ingest rows, read as the ingest tasks read them."""
    rows: list[pa.Table] = []
    buf = ingest.ShardBuffer(100, lambda i, t: rows.append(t), pool=cfg.pool)
    files = ingest.resolve_inputs(cfg)
    for unit in ingest.units(files, 1000, cfg):
        buf.source = unit.path
        for raw in ingest.read_rows(pools_path(unit.path), cfg, None, unit.first_line, unit.members, unit.path):
            buf.add(raw)
    buf.flush()
    return pa.concat_tables(rows).to_pylist() if rows else []


def pools_path(location: str):
    from mmcurate.storage import paths

    return paths.as_path(location)


def loaded(cfg: InputConfig, rows: list[dict]) -> list:
    table = pa.Table.from_pylist([r for r in rows if r[C.STATUS] == C.KEPT], schema=C.POOL_INGEST_SCHEMA)
    return pools.read_images(table, cfg, ".", 1 << 20)


def test_webdataset_tars_by_brace_pattern_with_every_problem_a_row(tmp_path):
    write_tar(tmp_path / "00000.tar", sample("000000000", 0, "a" * 32) + sample("000000001", 1, "b" * 32))
    broken = sample("000010000", 2) + [("000010001.txt", b"no image here")] + [("000010002.jpg", make_image(3))]
    broken += sample("000010003", 4) + [("000010004.jpg", b"<html>not an image</html>"), ("000010004.txt", b"fake")]
    write_tar(tmp_path / "00001.tar", broken)
    data = bytearray((tmp_path / "00001.tar").read_bytes())
    with tarfile.open(tmp_path / "00001.tar") as tar:
        third = next(m for m in tar.getmembers() if m.name == "000010003.jpg")
    data[third.offset + 148:third.offset + 156] = b"garbage!"  # its header's checksum: unreadable
    (tmp_path / "00001.tar").write_bytes(bytes(data))
    write_tar(tmp_path / "00002.tar", sample("000020000", 5) + sample("000020001", 6))
    full = (tmp_path / "00002.tar").read_bytes()
    with tarfile.open(tmp_path / "00002.tar") as tar:
        last = next(m for m in tar.getmembers() if m.name == "000020001.jpg")
    (tmp_path / "00002.tar").write_bytes(full[:last.offset_data + 100])  # cut inside the last image

    cfg = InputConfig(path=str(tmp_path / "{00000..00002}.tar"))
    assert cfg.kind == "webdataset"
    rows = ingested(cfg)
    outcome = [(r[C.SOURCE_KEY], r[C.STATUS], r[C.REASON]) for r in rows]
    assert outcome == [
        ("000000000", "kept", None), ("000000001", "kept", None),
        ("000010000", "kept", None),
        ("000010001", "failed", "missing_image"),
        ("000010002", "failed", "missing_caption"),
        (None, "failed", "malformed_row"),  # the broken header, its member skipped
        ("000010003", "failed", "missing_image"),  # the rest of that sample: its caption, no image
        ("000010004", "kept", None),  # not an image: for `load` to find, as download does
        ("000020000", "kept", None),
        ("000020001", "failed", "truncated"),
    ]
    first = rows[0]
    assert first[C.SOURCE_UID] == "a" * 32 and first[C.URL] == "http://pool.test/0.jpg"
    assert (first[C.ORIGINAL_WIDTH], first[C.ORIGINAL_HEIGHT]) == (960, 720) and first[C.CAPTION] == "picture 0"
    assert first[C.SOURCE_LINE] == 1 and rows[1][C.SOURCE_LINE] == 2 and rows[2][C.SOURCE_LINE] == 1
    assert "bytes" in rows[5][C.DETAIL] and "ends" in rows[-1][C.DETAIL]
    assert len({r[C.UID] for r in rows}) == len(rows)
    images = loaded(cfg, rows)
    assert images[0] == make_image(0) and images[-1] == make_image(5)


def test_img2dataset_parquet_rows_and_their_images(tmp_path):
    import pyarrow.parquet as pq

    table = pa.table({
        "url": ["http://pool.test/0.jpg", "http://pool.test/1.jpg", "http://pool.test/2.jpg"],
        "caption": ["zero", "one", "two"], "key": ["000000", "000001", "000002"], "uid": ["c" * 32, "d" * 32, "e" * 32],
        "status": ["success", "failed_to_download", "success"], "error_message": [None, "HTTP Error 404: Not Found", None],
        "original_width": [100, None, 300], "original_height": [80, None, 200],
        "jpg": [make_image(0), None, make_image(2)],
    })
    pq.write_table(table, tmp_path / "00000.parquet", row_group_size=2)
    cfg = InputConfig(path=str(tmp_path / "*.parquet"), format="img2dataset_parquet")
    rows = ingested(cfg)
    assert [(r[C.SOURCE_KEY], r[C.SOURCE_UID], r[C.REASON]) for r in rows] == [
        ("000000", "c" * 32, None), ("000001", "d" * 32, "missing_image"), ("000002", "e" * 32, None)]
    assert "HTTP Error 404" in rows[1][C.DETAIL]
    assert loaded(cfg, rows) == [make_image(0), make_image(2)]  # across row groups
    with pytest.raises(InputError, match="input.image_col"):
        ingested(InputConfig(path=str(tmp_path / "*.parquet"), format="img2dataset_parquet", image_col="png"))


def test_image_folder_with_sidecars_or_a_captions_file(tmp_path):
    pool = tmp_path / "pool"
    (pool / "cats").mkdir(parents=True)
    (pool / "cats" / "a.jpg").write_bytes(make_image(0))
    (pool / "cats" / "a.txt").write_text("a cat")
    (pool / "b.png").write_bytes(make_image(1, fmt="PNG"))  # no caption beside it
    (pool / "notes.md").write_text("not an image")
    cfg = InputConfig(path=str(pool), format="image_folder")
    rows = ingested(cfg)
    assert [(r[C.MEMBER], r[C.CAPTION], r[C.REASON]) for r in rows] == [
        ("b.png", None, "missing_caption"), ("cats/a.jpg", "a cat", None)]
    assert rows[1][C.SOURCE_KEY] == "cats/a.jpg" and loaded(cfg, rows) == [make_image(0)]

    (tmp_path / "captions.csv").write_text("file,caption\ncats/a.jpg,a tabby\nb.png,a square\ngone.jpg,lost\n"
                                           "../secret.jpg,escape\n")
    cfg = InputConfig(path=str(pool), format="image_folder", captions=str(tmp_path / "captions.csv"))
    rows = ingested(cfg)
    assert [(r[C.MEMBER], r[C.CAPTION], r[C.REASON]) for r in rows] == [
        ("cats/a.jpg", "a tabby", None), ("b.png", "a square", None), ("gone.jpg", "lost", None),
        (None, "escape", "malformed_row")]
    images = loaded(cfg, rows)
    assert images[:2] == [make_image(0), make_image(1, fmt="PNG")] and images[2][0] == "missing_image"


def test_pool_config_keys_are_checked():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="input.captions applies"):
        InputConfig(path="x.tar", captions="c.csv")
    assert InputConfig(path="pool/{0..9}.tar").kind == "webdataset"
    assert InputConfig(path="urls.parquet").kind == "urls"
    assert "format" not in InputConfig(path="urls.parquet").ingest_key()  # an older run dir's input is unchanged


def test_links_out_of_an_image_folder_are_never_read(tmp_path):
    pool, secret = tmp_path / "pool", tmp_path / "secret"
    pool.mkdir()
    secret.mkdir()
    (secret / "creds").write_text("password=hunter2")
    (secret / "x.jpg").write_bytes(b"private bytes")
    (pool / "cat.jpg").write_bytes(make_image(0))
    (pool / "cat.txt").symlink_to(secret / "creds")
    (pool / "dog.jpg").symlink_to(secret / "x.jpg")
    (pool / "dog.txt").write_text("a dog")
    cfg = InputConfig(path=str(pool), format="image_folder")
    rows = ingested(cfg)
    assert [(r[C.MEMBER], r[C.REASON]) for r in rows] == [("cat.jpg", "malformed_row"), ("dog.jpg", None)]
    assert "hunter2" not in json.dumps(rows)
    assert loaded(cfg, rows)[0][0] == "missing_image"  # the linked image: refused, unread


def test_reading_goes_on_past_a_header_tarfile_refuses(tmp_path):
    members = sample("000", 0) + [("z" * 120 + "/001.jpg", make_image(1)), ("z" * 120 + "/001.txt", b"one")] + sample("002", 2)
    with tarfile.open(tmp_path / "a.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = bytearray((tmp_path / "a.tar").read_bytes())
    with tarfile.open(tmp_path / "a.tar") as tar:
        long = next(m for m in tar.getmembers() if m.name.endswith("001.jpg"))
    after = long.offset + 2 * tarfile.BLOCKSIZE  # the header that follows the GNU long-name blocks
    data[after + 148:after + 156] = b"garbage!"
    (tmp_path / "a.tar").write_bytes(bytes(data))
    rows = ingested(InputConfig(path=str(tmp_path / "a.tar")))
    assert [r[C.REASON] for r in rows] == [None, "malformed_row", "missing_image", None]
    assert rows[-1][C.SOURCE_KEY] == "002"
