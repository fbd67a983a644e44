"""Fetching one URL through the guard, with retries, and naming every failure as a ledger reason."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from mmcurate.clients.deadline import deadline
from mmcurate.clients.netguard import PrivateAddressError

USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
# img2dataset's default: opt-outs that image crawlers for AI training honour
DISALLOWED_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex"})
_RETRYABLE = {"timeout", "connection_error", "http_429", "http_500", "http_502", "http_503", "http_504"}


class FetchError(Exception):
    """A download failed; `reason` is the ledger reason, the message its detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class DeadlineExceeded(FetchError):
    """An attempt outlived `download.deadline_s`: a stalled or trickling server, not retried."""

    def __init__(self, seconds: float):
        super().__init__("timeout", f"no complete answer within download.deadline_s ({seconds:g} s): "
                                    "the server stalls or trickles its bytes")


@dataclass(frozen=True)
class Fetcher:
    """Downloads bodies with bounded size, the guard, retries and X-Robots-Tag opt-outs."""

    opener: urllib.request.OpenerDirector
    timeout_s: float
    retries: int
    max_bytes: int
    user_agent_token: str | None = None
    respect_robots_header: bool = True
    backoff_s: float = 0.2
    deadline_s: float = 60.0  # one attempt, whole: connect, TLS, redirects, headers and body

    def fetch(self, url: str) -> bytes:
        """Return the body of `url`, retrying transient failures; raise FetchError otherwise."""
        attempt = 0
        while True:
            try:
                return self._fetch_once(url)
            except FetchError as err:
                if err.reason not in _RETRYABLE or isinstance(err, DeadlineExceeded) or attempt >= self.retries:
                    raise
            attempt += 1
            time.sleep(min(self.backoff_s * 2 ** (attempt - 1), 5.0))

    def _fetch_once(self, url: str) -> bytes:
        from img2dataset.downloader import (
            is_disallowed,  # heavy package: import in workers only
        )

        agent = USER_AGENT
        if self.user_agent_token:
            agent += f" (compatible; {self.user_agent_token})"
        request = urllib.request.Request(url, headers={"User-Agent": agent})
        with deadline(self.deadline_s) as attempt:
            try:
                body = self._read(request, is_disallowed)
            except Exception as err:  # every failure becomes a named ledger reason
                if attempt.expired:  # the watchdog cut the sockets: whatever broke, the cause is time
                    raise DeadlineExceeded(self.deadline_s) from None
                raise err if isinstance(err, FetchError) else classify(err) from None
            if attempt.expired:  # cut between reads: what arrived is not the whole body
                raise DeadlineExceeded(self.deadline_s)
            return body

    def _read(self, request: urllib.request.Request, is_disallowed) -> bytes:
        """One request through the opener: the body, bounded by max_image_bytes."""
        with self.opener.open(request, timeout=self.timeout_s) as response:
            if self.respect_robots_header and is_disallowed(
                response.headers, self.user_agent_token, DISALLOWED_DIRECTIVES
            ):
                raise FetchError("robots_disallowed", "the server's X-Robots-Tag forbids AI use of this image")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise FetchError("file_too_large", f"Content-Length {declared} > max_image_bytes {self.max_bytes}")
            body = response.read(self.max_bytes + 1)
            if len(body) > self.max_bytes:
                raise FetchError("file_too_large", f"body larger than max_image_bytes {self.max_bytes}")
            if declared and declared.isdigit() and len(body) < int(declared):
                raise FetchError("truncated", f"body ended early: got {len(body)} of {declared} bytes")
            return body


def classify(err: BaseException) -> FetchError:
    """Map an exception raised while fetching to a ledger reason and a readable detail."""
    if isinstance(err, urllib.error.HTTPError):
        err.close()
        if "infinite loop" in str(err.reason):  # urllib: a repeated URL, or more than 10 redirects
            return FetchError("redirect_loop", "redirect loop (a URL repeated, or more than 10 redirects)")
        if "redirection to url" in str(err.reason):  # urllib refuses e.g. file:// targets
            return FetchError("unsupported_scheme", str(err.reason))
        return FetchError(f"http_{err.code}", f"HTTP {err.code} {err.reason}")
    inner = err.reason if isinstance(err, urllib.error.URLError) and isinstance(err.reason, BaseException) else err
    if isinstance(inner, PrivateAddressError):
        return FetchError("private_address", str(inner))
    if isinstance(inner, (socket.timeout, TimeoutError)):
        return FetchError("timeout", "timed out")
    if isinstance(inner, socket.gaierror):
        return FetchError("dns_error", f"name resolution failed: {inner.strerror or inner}")
    if isinstance(inner, ssl.SSLError):
        return FetchError("tls_error", f"TLS failure: {inner}")
    if isinstance(inner, http.client.IncompleteRead):
        return FetchError("truncated", f"body ended early: got {len(inner.partial)} bytes, {inner.expected} missing")
    if isinstance(inner, (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine)):
        return FetchError("connection_error", f"{type(inner).__name__}: {inner}")
    if isinstance(err, urllib.error.URLError) and "unknown url type" in str(err.reason):
        return FetchError("unsupported_scheme", str(err.reason))
    if isinstance(inner, (http.client.HTTPException, OSError)):
        return FetchError("connection_error", f"{type(inner).__name__}: {inner}")
    if isinstance(inner, ValueError):
        return FetchError("bad_url", str(inner))
    return FetchError("download_error", f"{type(inner).__name__}: {inner}")
