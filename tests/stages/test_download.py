"""The download stage on every route of the loopback server: each outcome maps to its reason."""

from __future__ import annotations

import io

import pyarrow as pa
from PIL import Image

from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.stages.download import FEATURE_FIELDS, DownloadStage
from tests.conftest import EXPECTED


def test_every_route_maps_to_its_reason(image_server, tripwire):
    cfg = config_from_dict({
        "input": {"path": "x"},
        "download": {"allow_networks": ["127.0.0.1/32"], "timeout_s": 1, "retries": 0, "image_size": 64},
    })
    stage = DownloadStage(cfg)
    stage.setup()
    paths = list(EXPECTED)
    rows = pa.table({C.UID: paths, C.ROW: list(range(len(paths))), C.URL: [image_server.url(p) for p in paths],
                     C.CAPTION: ["c"] * len(paths)})
    out = stage.process(rows)
    assert out.schema == pa.schema([*C.DOWNLOAD_SCHEMA, *FEATURE_FIELDS])  # dedup on: download hands on features
    got = dict(zip(paths, out[C.REASON].to_pylist()))
    assert got == EXPECTED
    for record in out.to_pylist():
        if record[C.STATUS] == C.KEPT:
            img = Image.open(io.BytesIO(record[C.IMAGE]))
            assert img.format == "JPEG" and min(img.size) == 64  # keep_ratio: the shorter side is image_size
            assert (record[C.ORIGINAL_WIDTH], record[C.ORIGINAL_HEIGHT]) == (96, 72)
        else:
            assert record[C.STATUS] == C.FAILED and record[C.DETAIL] and record[C.IMAGE] is None


def test_retries_transient_errors_only(image_server, tripwire):
    cfg = config_from_dict({"input": {"path": "x"},
                            "download": {"allow_networks": ["127.0.0.1/32"], "retries": 2, "timeout_s": 2}})
    stage = DownloadStage(cfg)
    stage.setup()
    urls = [image_server.url("/e500.jpg"), image_server.url("/missing.jpg")]
    rows = pa.table({C.UID: ["a", "b"], C.ROW: [0, 1], C.URL: urls, C.CAPTION: ["c", "c"]})
    stage.process(rows)
    assert image_server.requests["/e500.jpg"] == 3  # first try + 2 retries
    assert image_server.requests["/missing.jpg"] == 1  # a 404 is final


def test_https_is_verified_guarded_and_under_the_deadline(tripwire, monkeypatch):
    from pathlib import Path

    from mmcurate.demo.server import ImageServer, Route
    from tests.conftest import make_image

    certs = Path(__file__).resolve().parents[1] / "certs"
    jpeg = make_image(4)
    routes = {"/ok.jpg": Route(jpeg), "/tarpit.jpg": Route(jpeg, trickle="body"),
              "/to-alias": Route(b"", 302, "text/plain", {"Location": "https://127.0.0.2/ok.jpg"})}
    with ImageServer(routes, tls=(str(certs / "loopback.pem"), str(certs / "loopback.key"))) as server:
        def outcomes(**download):
            cfg = config_from_dict({"input": {"path": "x"}, "download": {
                "allow_networks": ["127.0.0.1/32"], "retries": 0, "timeout_s": 2, "deadline_s": 1.5, **download}})
            stage = DownloadStage(cfg)
            stage.setup()
            urls = [server.url(p) for p in ("/ok.jpg", "/tarpit.jpg", "/to-alias")]
            rows = pa.table({C.UID: ["a", "b", "c"], C.ROW: [0, 1, 2], C.URL: urls, C.CAPTION: ["c"] * 3})
            return stage.process(rows).select([C.REASON, C.DETAIL]).to_pylist()

        # the certificate is not trusted: every request fails in the handshake, named
        untrusted = outcomes()
        assert [o[C.REASON] for o in untrusted] == ["tls_error"] * 3
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted[0][C.DETAIL]
        monkeypatch.setenv("SSL_CERT_FILE", str(certs / "loopback.pem"))  # trusted from here on
        out = outcomes()
    # fetched over TLS; a trickled TLS body ends at the deadline; a redirect to a loopback alias is refused
    assert [o[C.REASON] for o in out] == [None, "timeout", "private_address"], out
    assert "deadline_s" in out[1][C.DETAIL]
