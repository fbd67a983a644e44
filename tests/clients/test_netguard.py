"""The private-network guard: direct, redirected and DNS-resolved private targets are refused
before any connection. Refused targets are loopback aliases or names a patched resolver maps to
private addresses; the tripwire fails the test before any connection outside 127.0.0.0/8."""

from __future__ import annotations

import ipaddress
import socket

import pyarrow as pa
import pytest

from mmcurate.clients.netguard import NetworkPolicy
from mmcurate.demo.server import Route
from mmcurate.schemas import columns as C
from mmcurate.schemas.config import config_from_dict
from mmcurate.stages.download import DownloadStage


def stage(**download) -> DownloadStage:
    cfg = config_from_dict({"input": {"path": "x"}, "download": {"timeout_s": 2, "retries": 0, **download}})
    s = DownloadStage(cfg)
    s.setup()
    return s


def download(s: DownloadStage, urls: list[str]) -> list[dict]:
    rows = pa.table({C.UID: [str(i) for i in range(len(urls))], C.ROW: list(range(len(urls))), C.URL: urls,
                     C.CAPTION: ["c"] * len(urls)})
    return s.process(rows).select([C.STATUS, C.REASON, C.DETAIL]).to_pylist()


@pytest.fixture
def resolver(monkeypatch):
    """Names ending .evil.test resolve (in-process) to private addresses; `rebind.evil.test` answers
    loopback (allowed in these tests) the first time and 10.0.0.1 every time after, as a DNS-rebinding
    attacker's server does. Returns how often each name was asked."""
    real = socket.getaddrinfo
    table = {"ten.evil.test": "10.0.0.1", "metadata.evil.test": "169.254.169.254", "mapped.evil.test": "::ffff:10.0.0.1"}
    asked: dict[str, int] = {}

    def fake(host, port, *args, **kwargs):
        asked[host] = asked.get(host, 0) + 1
        if host == "rebind.evil.test":
            ip = "127.0.0.1" if asked[host] == 1 else "10.0.0.1"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]
        if host in table:
            ip = table[host]
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            addr = (ip, port) if family == socket.AF_INET else (ip, port, 0, 0)
            return [(family, socket.SOCK_STREAM, 6, "", addr)]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return asked


def test_policy_classes():
    p = NetworkPolicy.from_config(False, [])
    for addr in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                 "0.0.0.0", "224.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1"):
        assert p.refusal(ipaddress.ip_address(addr)) is not None, addr
    assert p.refusal(ipaddress.ip_address("93.184.216.34")) is None
    opened = NetworkPolicy.from_config(True, [])
    assert opened.refusal(ipaddress.ip_address("10.1.2.3")) is None
    assert opened.refusal(ipaddress.ip_address("169.254.169.254")) is not None  # metadata needs allow_networks
    mirror = NetworkPolicy.from_config(False, ["10.1.0.0/16"])
    assert mirror.refusal(ipaddress.ip_address("10.1.9.9")) is None
    assert mirror.refusal(ipaddress.ip_address("10.2.0.1")) is not None


def test_guard_refuses_without_connecting(image_server, tripwire, resolver):
    image_server.routes["/to-alias"] = Route(b"", 302, "text/plain", {"Location": image_server.url("/ok.jpg", host="127.0.0.2")})
    s = stage(allow_networks=["127.0.0.1/32"])
    out = download(s, [
        image_server.url("/ok.jpg"),  # allowed by allow_networks
        image_server.url("/to-alias"),  # redirect to a loopback alias outside the allowed network
        image_server.url("/ok.jpg", host="127.0.0.3"),  # direct, outside the allowed network
        f"http://ten.evil.test:{image_server.port}/ok.jpg",  # name resolving to 10.0.0.1
        f"http://metadata.evil.test:{image_server.port}/latest/meta-data/",  # name resolving to metadata
        f"http://mapped.evil.test:{image_server.port}/ok.jpg",  # IPv4-mapped IPv6 private address
    ])
    assert [o[C.REASON] for o in out] == [None] + ["private_address"] * 5
    assert "127.0.0.2" in out[1][C.DETAIL] and "169.254.169.254 is link-local" in out[4][C.DETAIL]
    # the refused targets were never contacted: only the allowed request and the redirect reached the server
    assert image_server.requests["/ok.jpg"] == 1 and image_server.requests["/to-alias"] == 1


def test_default_refuses_loopback_and_allow_private_opens_it(image_server, tripwire, resolver):
    assert download(stage(), [image_server.url("/ok.jpg")])[0][C.REASON] == "private_address"
    assert image_server.requests["/ok.jpg"] == 0
    opened = stage(allow_private_networks=True)
    out = download(opened, [image_server.url("/ok.jpg"),
                            f"http://metadata.evil.test:{image_server.port}/x"])
    assert [o[C.REASON] for o in out] == [None, "private_address"]


def test_tripwire_itself_catches_outside_connections(tripwire):
    from tests.conftest import TripwireTriggered

    sock = socket.socket()
    try:
        with pytest.raises(TripwireTriggered):
            sock.connect(("10.0.0.1", 9))  # refused by the tripwire before any packet is sent
    finally:
        sock.close()
    tripwire.clear()


def test_redirect_to_a_name_that_resolves_private_is_refused(image_server, tripwire, resolver):
    # the first hop is allowed; the redirect names a host whose address is only known after resolving
    image_server.routes["/to-metadata"] = Route(
        b"", 302, "text/plain", {"Location": f"http://metadata.evil.test:{image_server.port}/latest/meta-data/"})
    image_server.routes["/to-ten"] = Route(b"", 301, "text/plain", {"Location": f"http://ten.evil.test:{image_server.port}/ok.jpg"})
    out = download(stage(allow_networks=["127.0.0.1/32"]), [image_server.url("/to-metadata"), image_server.url("/to-ten")])
    assert [o[C.REASON] for o in out] == ["private_address"] * 2
    assert "169.254.169.254 is link-local" in out[0][C.DETAIL] and "10.0.0.1 is a private address" in out[1][C.DETAIL]
    assert resolver["metadata.evil.test"] >= 1 and resolver["ten.evil.test"] >= 1  # resolved, never connected to
    assert image_server.requests["/ok.jpg"] == 0


def test_dns_rebinding_cannot_slip_between_check_and_connect(image_server, tripwire, resolver):
    # resolved once: the address checked is the address connected to. A guard that checked one
    # resolution and let the socket resolve again would connect to 10.0.0.1, and the tripwire would fail
    # the test before any packet left
    out = download(stage(allow_networks=["127.0.0.1/32"]), [f"http://rebind.evil.test:{image_server.port}/ok.jpg"])
    assert out[0][C.REASON] is None and image_server.requests["/ok.jpg"] == 1
    assert resolver["rebind.evil.test"] == 1
    # asked again (a second request), the name now answers 10.0.0.1: refused, never contacted
    out = download(stage(allow_networks=["127.0.0.1/32"]), [f"http://rebind.evil.test:{image_server.port}/ok.jpg"])
    assert out[0][C.REASON] == "private_address" and image_server.requests["/ok.jpg"] == 1


def test_connect_to_keeps_the_url_and_the_guard(image_server, tripwire):
    # requests for a name that resolves nowhere go to the loopback server; mapped to an address the
    # policy refuses, they are refused without a connection
    s = stage(allow_networks=["127.0.0.1/32"],
              connect_to=["img.mmcurate.test:80:127.0.0.1:%d" % image_server.port, "alias.mmcurate.test:80:127.0.0.2:%d" % image_server.port])
    out = download(s, ["http://img.mmcurate.test/ok.jpg", "http://alias.mmcurate.test/ok.jpg"])
    assert [o[C.REASON] for o in out] == [None, "private_address"]
    assert out[1][C.DETAIL].startswith("refused alias.mmcurate.test (connect_to 127.0.0.2): 127.0.0.2 is a loopback")
    assert image_server.requests["/ok.jpg"] == 1
