"""A server that trickles its bytes, each inside the read timeout, cannot hold a download thread
past `download.deadline_s`: headers or body, the attempt fails as `timeout` and is not retried."""

from __future__ import annotations

import threading
import time

import pyarrow as pa

from mmcurate.clients import deadline
from mmcurate.demo.server import Route
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.stages.download import DownloadStage
from tests.conftest import make_image


def download(urls: list[str], **settings) -> list[dict]:
    cfg = config_from_dict({"input": {"path": "x"}, "download": {"allow_networks": ["127.0.0.1/32"], **settings}})
    stage = DownloadStage(cfg)
    stage.setup()
    rows = pa.table({C.UID: [str(i) for i in range(len(urls))], C.ROW: list(range(len(urls))), C.URL: urls,
                     C.CAPTION: ["c"] * len(urls)})
    return stage.process(rows).select([C.STATUS, C.REASON, C.DETAIL]).to_pylist()


def test_trickled_headers_and_bodies_end_at_the_deadline(image_server, tripwire):
    jpeg = make_image(7)
    # a byte every 0.2 s, each read well inside timeout_s: without a deadline, minutes per URL
    image_server.routes["/tarpit-body.jpg"] = Route(jpeg, trickle="body")
    image_server.routes["/tarpit-all.jpg"] = Route(jpeg, trickle="all")
    image_server.routes["/slow-but-fine.jpg"] = Route(jpeg, delay_s=0.3)
    start = time.monotonic()
    out = download([image_server.url("/tarpit-body.jpg"), image_server.url("/tarpit-all.jpg"),
                    image_server.url("/slow-but-fine.jpg")], timeout_s=2, deadline_s=1.5, retries=2)
    elapsed = time.monotonic() - start
    assert [o[C.REASON] for o in out] == ["timeout", "timeout", None]
    assert all("download.deadline_s (1.5 s)" in o[C.DETAIL] for o in out[:2])
    assert elapsed < 6, elapsed  # the threads were let go, not kept for the trickle's minutes
    # a tarpit is not asked again: retries are for transient failures
    assert image_server.requests["/tarpit-body.jpg"] == 1 and image_server.requests["/tarpit-all.jpg"] == 1


def test_a_redirect_hop_is_under_the_same_deadline(image_server, tripwire):
    image_server.routes["/tarpit.jpg"] = Route(make_image(8), trickle="body")
    image_server.routes["/hop"] = Route(b"", 302, "text/plain", {"Location": "/tarpit.jpg"})
    out = download([image_server.url("/hop")], timeout_s=2, deadline_s=1.0, retries=0)
    assert out[0][C.REASON] == "timeout" and "deadline_s" in out[0][C.DETAIL]


def test_finished_attempts_leave_nothing_to_fire():
    fired = []
    for _ in range(200):
        with deadline.deadline(0.2) as attempt:
            pass
        fired.append(attempt)
    time.sleep(0.5)
    assert not any(a.expired for a in fired)
    # an attempt still running when its time is up is expired, in its own thread only
    results = {}

    def run(name: str, seconds: float) -> None:
        with deadline.deadline(seconds) as attempt:
            time.sleep(0.4)
        results[name] = attempt.expired

    threads = [threading.Thread(target=run, args=("short", 0.1)), threading.Thread(target=run, args=("long", 5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"short": True, "long": False}
