"""Object-store locations as the config and the command line give them (`s3://bucket/prefix`):
the checks that need nothing but the text, so that a location is refused before anything is
written that could record it. A refused location is never repeated in the message: it may hold
a secret. And `download.connect_to`'s HOST:PORT:CONNECT_HOST:CONNECT_PORT entries."""

from __future__ import annotations

import re

from mmcurate.schemas.errors import ConfigError

URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
SCHEMES = ("s3",)
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's rule for bucket names


def check_location(text: str, key: str) -> tuple[str, str] | None:
    """(scheme, "bucket/key") of an object-store location, None for a local path; a ConfigError
    naming `key` for another scheme, or for anything before the first "/" that is not a bucket
    name (`KEY:SECRET@bucket` is not, whatever the secret holds)."""
    match = URI.match(text)
    if not match:
        return None
    scheme, rest = match.group(1).lower(), text[match.end():].rstrip("/")
    bucket = rest.split("/", 1)[0]
    if "@" in bucket or ":" in bucket or ("@" in rest and not BUCKET.fullmatch(bucket)):
        raise ConfigError(f"{key}: {scheme}://…: credentials do not belong in a location (it is not repeated here); "
                          "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL) in the environment")
    if scheme not in SCHEMES:
        raise ConfigError(f"{key}: {text}: the {scheme}:// scheme is not supported (use a local path or s3://bucket/prefix)")
    if not BUCKET.fullmatch(bucket):
        raise ConfigError(f"{key}: {text}: {bucket!r} is not a bucket name (3-63 lower-case letters, digits, '.', '-')"
                          if bucket else f"{key}: {text}: no bucket named")
    return scheme, rest


_CONNECT_TO = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):(\d{1,5}):(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):(\d{1,5})$")


def parse_connect_to(entry: str) -> tuple[str, int, str, int]:
    """("HOST", PORT, "CONNECT_HOST", CONNECT_PORT) of a `download.connect_to` entry; ValueError otherwise."""
    match = _CONNECT_TO.match(entry)
    if not match or not all(0 < int(match.group(g)) < 65536 for g in (2, 4)):
        raise ValueError(f"{entry!r} is not HOST:PORT:CONNECT_HOST:CONNECT_PORT (as curl's --connect-to; "
                         "an IPv6 address in brackets)")
    host, port, to_host, to_port = match.groups()
    return host.strip("[]").lower(), int(port), to_host.strip("[]"), int(to_port)
