"""The download stage on every route of the loopback server: each outcome maps to its reason."""

from __future__ import annotations

import io

import pyarrow as pa
from PIL import Image

from mmcurate.pipelines.download import DownloadStage
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
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
    assert out.schema == C.DOWNLOAD_SCHEMA
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
