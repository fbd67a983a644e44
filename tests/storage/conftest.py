"""An S3 API server on loopback (moto's server mode), a bucket in it, and the environment that
points every client at it; plus a tripwire for subprocesses (a sitecustomize that refuses and logs
any connection outside 127.0.0.0/8, in the run's driver and in every process Ray starts).

One such attempt is Ray's own: with the dashboard off, `ray.init` still starts a dashboard process
for its usage-stats module, which asks 169.254.169.254 and metadata.google.internal which cloud it
runs on (ray/_common/usage/usage_lib.get_cloud_from_metadata_requests), whatever
RAY_USAGE_STATS_ENABLED says. The tripwire refuses it before any packet leaves, and logs it as
`ray-cloud-probe`, so that a test can tell it from anything of ours."""

from __future__ import annotations

import logging
import os
import textwrap
import uuid
from pathlib import Path

import pytest

SITECUSTOMIZE = textwrap.dedent('''
    import ipaddress, os, socket
    _log = os.environ["MMCURATE_TRIPWIRE_LOG"]
    _real = socket.socket.connect, socket.socket.connect_ex

    def _check(address):
        if not isinstance(address, tuple):
            return  # a unix socket (Ray's own)
        try:
            ok = ipaddress.ip_address(address[0]).is_loopback
        except ValueError:
            ok = False
        if not ok:
            import traceback
            stack = "".join(traceback.format_stack())
            origin = "ray-cloud-probe" if "get_cloud_from_metadata_requests" in stack else "other"
            with open(_log, "a") as f:
                f.write(f"{origin} {os.getpid()} {address!r}\\n" + ("" if origin != "other" else stack))
            raise ConnectionRefusedError(f"tripwire: {address!r} is outside 127.0.0.0/8")

    def connect(self, address):
        _check(address)
        return _real[0](self, address)

    def connect_ex(self, address):
        _check(address)
        return _real[1](self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
''')


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path) -> dict:
    """A fresh bucket on the loopback server, and the standard AWS variables that reach it (set
    in this process and handed to subprocesses), with metadata look-ups off."""
    env = {
        "AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
        "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-creds"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import s3fs

    bucket = f"b-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(use_listings_cache=False).mkdir(bucket)
    return {**env, "bucket": bucket}


@pytest.fixture
def subprocess_tripwire(tmp_path) -> tuple[dict, Path]:
    """(env for a subprocess, the log its refused connections go to)."""
    folder = tmp_path / "tripwire"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = folder / "attempts.log"
    pythonpath = os.pathsep.join([str(folder)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    return {"PYTHONPATH": pythonpath, "MMCURATE_TRIPWIRE_LOG": str(log)}, log
