"""Shared fixtures: a loopback image server with every failure route, and a network tripwire."""

from __future__ import annotations

import io
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from mmcurate.demo import bomb_png
from mmcurate.demo.server import ImageServer, Route

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def make_image(i: int, size: tuple[int, int] = (96, 72), fmt: str = "JPEG") -> bytes:
    """A distinct small picture for index `i`."""
    img = Image.new("RGB", size, ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256))
    draw = ImageDraw.Draw(img)
    w, h = size
    draw.ellipse((i % 20, i % 15, w // 2 + i % 30, h // 2 + i % 25), fill=((i * 11) % 256, 200, (i * 7) % 256))
    draw.rectangle((w // 2, h // 2, w - 1 - i % 10, h - 1), fill=(255 - (i * 13) % 256, 30, 90))
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def failure_routes() -> dict[str, Route]:
    """The routes every failure reason is tested with."""
    jpeg = make_image(1)
    return {
        "/ok.jpg": Route(jpeg),
        "/ok.png": Route(make_image(2, fmt="PNG"), content_type="image/png"),
        "/ok.webp": Route(make_image(3, fmt="WEBP"), content_type="image/webp"),
        "/e500.jpg": Route(b"boom", 500, "text/plain"),
        "/slow.jpg": Route(jpeg, delay_s=3.0),
        "/truncated.jpg": Route(jpeg, truncate_to=len(jpeg) // 3),
        "/html.jpg": Route(b"<!doctype html><html><body>hello</body></html>", content_type="image/jpeg"),
        "/bomb.png": Route(bomb_png(), content_type="image/png"),
        "/r1": Route(b"", 302, "text/plain", {"Location": "/r2"}),
        "/r2": Route(b"", 301, "text/plain", {"Location": "/r3"}),
        "/r3": Route(b"", 307, "text/plain", {"Location": "/ok.jpg"}),
        "/loop-a": Route(b"", 302, "text/plain", {"Location": "/loop-b"}),
        "/loop-b": Route(b"", 302, "text/plain", {"Location": "/loop-a"}),
        "/empty.jpg": Route(b""),
    }


# path -> (reason or None when kept)
EXPECTED = {
    "/ok.jpg": None,
    "/ok.png": None,
    "/ok.webp": None,
    "/missing.jpg": "http_404",
    "/e500.jpg": "http_500",
    "/slow.jpg": "timeout",
    "/truncated.jpg": "truncated",
    "/html.jpg": "not_an_image",
    "/bomb.png": "image_too_large",
    "/r1": None,
    "/loop-a": "redirect_loop",
    "/empty.jpg": "not_an_image",
}


@pytest.fixture
def image_server():
    with ImageServer(failure_routes()) as server:
        yield server


class TripwireTriggered(BaseException):
    """Raised (past every `except Exception`) when code tries to connect outside 127.0.0.0/8."""


@pytest.fixture
def tripwire(monkeypatch):
    """Fail the test before any TCP/UDP connection to an address outside 127.0.0.0/8 is attempted."""
    attempts: list[object] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def check(address) -> None:
        if isinstance(address, tuple):
            host = address[0]
            try:
                ip = ipaddress.ip_address(host.split("%", 1)[0])
            except ValueError:
                attempts.append(address)
                raise TripwireTriggered(f"connect to unresolved name {address!r}")
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if not (isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("127.0.0.0/8")) and not (
                ip == ipaddress.ip_address("::1")
            ):
                attempts.append(address)
                raise TripwireTriggered(f"connection attempted to {address!r}, outside 127.0.0.0/8")

    def connect(self, address):
        check(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield attempts
    assert attempts == [], f"connections attempted outside loopback: {attempts}"


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed `mmcurate` command line as users do; return the finished process."""
    cmd = [sys.executable, "-m", "mmcurate", *args]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def shapes_clip(tmp_path_factory) -> tuple[Path, dict]:
    """The offline stand-in CLIP (trained once per session, ~1.5 min on 2 cores) and its card.

    Trained into a session cache that MMCURATE_CACHE points at, so `mmcurate demo` run by a
    test as a subprocess finds the same model instead of training its own.
    """
    from mmcurate.demo import shapes

    cache = tmp_path_factory.mktemp("mmcurate-cache")
    os.environ["MMCURATE_CACHE"] = str(cache)
    return shapes.ensure_model()


@pytest.fixture(scope="session")
def demo_run(shapes_clip, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`mmcurate demo`, run once per session: every stage on, the run an auditor and a researcher
    use in the README (its folder and the finished process). Tests read it; a test that changes a
    run copies it first."""
    run_dir = tmp_path_factory.mktemp("demo") / "demo"
    proc = run_cli("demo", "--run-dir", str(run_dir), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc


# Safety and privacy stages off: for tests about other stages (the default toxicity model is a
# download, and these stages have their own tests).
SAFETY_OFF = {
    "safety": {"toxicity": {"enabled": False}, "nsfw": {"enabled": False}},
    "privacy": {"faces": {"enabled": False}, "pii": {"enabled": False}},
}
SAFETY_OFF_SET = ["--set", "safety.toxicity.enabled=false", "--set", "safety.nsfw.enabled=false",
                  "--set", "privacy.faces.enabled=false", "--set", "privacy.pii.enabled=false"]


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium (Debian's chromium + chromium-driver) driven by Selenium with an explicit
    driver path: no downloads, no stats, the console logged. Skips where either is missing."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None or shutil.which("chromedriver") is None:
        pytest.skip("Chromium and chromedriver are not installed (make test installs the Debian packages "
                    "chromium and chromium-driver where it can)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.update(SE_OFFLINE="true", SE_AVOID_STATS="true")  # Selenium Manager: no downloads, no stats
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
                 "--window-size=1280,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()
