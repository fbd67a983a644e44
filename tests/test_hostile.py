"""Hostile input through `mmcurate run`: every case ends as a ledger row with its expected reason
(or kept), nothing crashes, nothing is lost. Names that resolve to private addresses and
internationalised names are tested in-process, behind a patched resolver and the tripwire."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from skimage import data

from mmcurate.demo import bomb_png
from mmcurate.demo.server import ImageServer, Route
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.stages.download import DownloadStage
from tests.conftest import SAFETY_OFF, run_cli

pytestmark = pytest.mark.slow
PHOTO = Image.fromarray(data.astronaut()).resize((120, 80))


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def hostile_images() -> dict[str, tuple[Route, str | None]]:
    """path -> (route, expected reason or None for kept)."""
    import cv2

    grey16 = (np.asarray(PHOTO.convert("L")).astype(np.uint16) * 257)
    png16 = cv2.imencode(".png", np.stack([grey16] * 3, -1))[1].tobytes()
    palette = PHOTO.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P", palette=Image.ADAPTIVE)
    gif = io.BytesIO()
    PHOTO.save(gif, "GIF", save_all=True, append_images=[PHOTO.rotate(90), PHOTO.rotate(180)], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    jpeg = encoded(PHOTO, "JPEG")
    return {
        "/cmyk.jpg": (Route(encoded(PHOTO.convert("CMYK"), "JPEG")), None),
        "/sixteen-bit.png": (Route(png16, content_type="image/png"), None),
        "/palette-transparent.png": (Route(encoded(palette, "PNG", transparency=0), content_type="image/png"), None),
        "/animated.gif": (Route(gif.getvalue(), content_type="image/gif"), None),
        "/exif-rotated.jpg": (Route(encoded(PHOTO, "JPEG", exif=exif.tobytes())), None),
        "/truncated.jpg": (Route(jpeg, truncate_to=len(jpeg) // 3), "truncated"),
        "/bomb.png": (Route(bomb_png(), content_type="image/png"), "image_too_large"),
        "/zero.jpg": (Route(b""), "not_an_image"),
        "/page.jpg": (Route(b"<!doctype html><title>hi</title>", content_type="image/jpeg"), "not_an_image"),
        # a kept row whose URL and caption look like paths out of the run dir
        "/..%2F..%2F..%2Fescape.jpg": (Route(encoded(PHOTO.rotate(180), "JPEG")), None),
    }


def hostile_rows(server) -> list[tuple[dict, str | None]]:
    """(row, expected reason) for rows whose trouble is in the input itself."""
    ok = server.url("/cmyk.jpg")
    return [
        ({"url": ok, "caption": "x" * 1_000_000}, "caption_too_long"),
        ({"url": ok + "?q=" + "a" * 20_000, "caption": "a 20 KB url"}, "url_too_long"),
        ({"url": ok, "caption": ""}, "missing_caption"),
        ({"url": ok, "caption": "   "}, "missing_caption"),
        ({"url": ok, "caption": "a null\x00byte"}, "bad_caption"),
        ({"url": f"http://user:password@127.0.0.1:{server.port}/cmyk.jpg", "caption": "creds"}, "credentials_in_url"),
        ({"url": "file:///etc/passwd", "caption": "a local file"}, "unsupported_scheme"),
        ({"url": "data:image/png;base64,iVBORw0KGgo=", "caption": "inline"}, "unsupported_scheme"),
        ({"url": "gopher://127.0.0.1:70/0", "caption": "old"}, "unsupported_scheme"),
        ({"url": f"http://[::1]:{server.port}/cmyk.jpg", "caption": "ipv6 loopback literal"}, "private_address"),
        ({"url": "http://[::1", "caption": "broken ipv6 literal"}, "bad_url"),
        ({"url": ok + " with space", "caption": "a space"}, "bad_url"),
    ]


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    images = hostile_images()
    with ImageServer({p: r for p, (r, _) in images.items()}) as server:
        expected = [({"url": server.url(p), "caption": f"hostile {p}"}, reason) for p, (_, reason) in images.items()]
        expected[-1][0]["caption"] = "../../../../tmp/escape/../passwd"
        expected += hostile_rows(server)
        expected.append((expected[0][0], "exact_duplicate"))  # the same row twice
        rows = [r for r, _ in expected]
        half = len(rows) // 2
        # half as JSONL with malformed lines and bad bytes, half as CSV with a short row
        jsonl = "\n".join(json.dumps(r) for r in rows[:half]).encode() + b"\n{not json\n" + \
            b'{"url": "http://127.0.0.1/x.jpg", "caption": "bad \xff\xfe bytes"}\n'
        (tmp / "in").mkdir()
        (tmp / "in" / "a.jsonl").write_bytes(jsonl)
        import csv

        with open(tmp / "in" / "b.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["url", "caption"])
            for r in rows[half:]:
                writer.writerow([r["url"], r["caption"]])
            f.write(f'{server.url("/cmyk.jpg")},"a quote that never closes\n')  # must not swallow the next line
            f.write("only-one-field\n")
        config = {
            "input": {"path": str(tmp / "in" / "*"), "shard_size": 7},
            "download": {"allow_networks": ["127.0.0.1/32"], "timeout_s": 2, "retries": 0, "image_size": 64},
            "dedup": {"phash": {"enabled": False}},
            "clip": {"enabled": False},
            **SAFETY_OFF,
            "export": {"formats": ["webdataset", "parquet"]},
        }
        (tmp / "c.yaml").write_text(yaml.safe_dump(config))
        proc = run_cli("run", str(tmp / "c.yaml"), "--run-dir", str(tmp / "run"), "--quiet")
        assert proc.returncode == 0, proc.stderr
    return tmp, expected, half


def test_every_hostile_row_has_its_reason(hostile_run):
    tmp, expected, half = hostile_run
    ledger = pq.read_table(tmp / "run" / "ledger.parquet").to_pylist()
    # input order: the JSONL half (and its two bad lines), then the CSV half (and its short row)
    jsonl_rows = [r for r in ledger if r[C.SOURCE].endswith("a.jsonl")]
    csv_rows = [r for r in ledger if r[C.SOURCE].endswith("b.csv")]
    assert len(ledger) == len(expected) + 4
    got = [r[C.REASON] for r in jsonl_rows[:half]] + [r[C.REASON] for r in csv_rows[:len(expected) - half]]
    assert got == [reason for _, reason in expected]
    assert [r[C.REASON] for r in jsonl_rows[half:]] == ["malformed_row", "not_utf8"]
    assert [r[C.REASON] for r in csv_rows[-2:]] == ["malformed_row"] * 2
    assert "never closes" in csv_rows[-2][C.DETAIL] and "expected 2 fields, got 1" in csv_rows[-1][C.DETAIL]
    manifest = json.loads((tmp / "run" / "manifest.json").read_text())["ledger"]
    assert manifest["rows"] == manifest["kept"] + manifest["dropped"] + manifest["failed"] == len(ledger)


def test_odd_images_are_stored_as_upright_rgb(hostile_run):
    tmp, _, _ = hostile_run
    exported = [r for f in sorted((tmp / "run" / "shards" / "parquet").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    by_path = {r[C.URL].rsplit("/", 1)[-1]: r for r in exported}
    reference = np.asarray(PHOTO.convert("L").resize((96, 64)), np.float32)
    for name in ("cmyk.jpg", "sixteen-bit.png", "palette-transparent.png", "animated.gif", "exif-rotated.jpg"):
        img = Image.open(io.BytesIO(by_path[name][C.IMAGE]))
        assert img.mode == "RGB", name
        grey = np.asarray(img.convert("L"), np.float32)
        # the picture survives: same brightness as the source (16-bit scaled, CMYK converted, not washed out)
        assert abs(grey.mean() - reference.mean()) < 12, (name, grey.mean(), reference.mean())
    rotated = Image.open(io.BytesIO(by_path["exif-rotated.jpg"][C.IMAGE]))
    assert rotated.height > rotated.width  # the EXIF orientation was applied: portrait, as viewers show it


def test_input_data_never_names_a_file_or_leaves_the_run_dir(hostile_run):
    import re
    import tarfile

    tmp, _, _ = hostile_run
    assert sorted(p.name for p in tmp.iterdir()) == ["c.yaml", "in", "run"]  # nothing written beside the run dir
    names = {p.name for p in (tmp / "run").rglob("*")}
    assert not any("hostile" in n or "passwd" in n or "escape" in n or ".." in n for n in names)
    members = []
    for path in (tmp / "run" / "shards" / "webdataset").glob("*.tar"):
        with tarfile.open(path) as tar:
            members += tar.getmembers()
    assert members and all(m.isfile() and re.fullmatch(r"\d{12}\.[a-z]+", m.name) for m in members)
    exported = [r for f in (tmp / "run" / "shards" / "parquet").glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    escape = [r for r in exported if "escape" in r[C.URL]]
    assert len(escape) == 1 and escape[0][C.CAPTION].startswith("../")  # kept, and its caption left as it was


@pytest.fixture
def idn_resolver(monkeypatch):
    """Internationalised names resolve (in-process) to private addresses."""
    import socket

    real = socket.getaddrinfo
    table = {"xn--bcher-kva.evil.test": "10.0.0.7", "bücher.evil.test": "10.0.0.7", "intranet.evil.test": "192.168.1.5"}
    asked = []

    def fake(host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        asked.append(name)
        if name in table:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (table[name], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return asked


def test_names_resolving_to_private_addresses_are_refused(tripwire, idn_resolver):
    cfg = config_from_dict({"input": {"path": "x"}, "download": {"timeout_s": 2, "retries": 0}})
    stage = DownloadStage(cfg)
    stage.setup()
    urls = ["http://bücher.evil.test/a.jpg", "http://xn--bcher-kva.evil.test/a.jpg", "http://intranet.evil.test/a.jpg"]
    rows = pa.table({C.UID: ["a", "b", "c"], C.ROW: [0, 1, 2], C.URL: urls, C.CAPTION: ["c"] * 3})
    out = stage.process(rows).to_pylist()
    assert [r[C.REASON] for r in out] == ["private_address"] * 3, [r[C.DETAIL] for r in out]
    assert idn_resolver  # the names were resolved in-process, never connected to
