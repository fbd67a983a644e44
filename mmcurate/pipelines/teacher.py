"""An OpenAI-compatible chat-completions client that survives a real teacher.

- bounded concurrency (the caller's thread pool) and an optional requests-per-second limit
  shared by every thread of a worker;
- a per-request timeout;
- retries with exponential backoff and full jitter on timeouts, connection errors, 408, 429,
  5xx and malformed bodies, honouring `Retry-After` (seconds or an HTTP date) on 429 and 503;
- no retry on other 4xx (400, 401, 403, 404, 422 ...): the request fails with `http_NNN`;
- never raises for one request: every call returns a `Reply` (ok, or failed with a reason);
- the API key comes from the environment variable the config names and is only ever put in the
  Authorization header: it is not logged, not stored, and not part of the request hash.

Why not `ray.data.llm`'s HTTP processor: it retries only `max_retries` times (default 0) and
then raises, failing the whole job, and hands 4xx answers back as response bodies; one bad row
must never end a long run here, and every failure must become a reason.
"""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
from dataclasses import dataclass, field

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0


@dataclass
class Reply:
    ok: bool
    body: dict | None = None  # the parsed response (ok only)
    status: int | None = None
    reason: str | None = None  # failed: http_NNN, timeout, connection_error, malformed_response
    error: str | None = None
    attempts: int = 0
    retries: int = 0
    latency_s: float = 0.0  # of the last attempt
    waited_s: float = 0.0  # total backoff
    retry_after: list[float] = field(default_factory=list)  # Retry-After values honoured


class RateLimiter:
    """At most `per_s` request starts per second, across threads (a token bucket of size 1)."""

    def __init__(self, per_s: float | None):
        self.interval = 1.0 / per_s if per_s else 0.0
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        if start > now:
            time.sleep(start - now)


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class TeacherClient:
    def __init__(self, endpoint: str, api_key: str | None, *, timeout_s: float, max_retries: int,
                 max_concurrency: int, requests_per_s: float | None = None, backoff_s: float = 0.5):
        import httpx

        self.url = endpoint.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        # no environment proxies: the endpoint is the user's, reached directly
        self.http = httpx.Client(headers=headers, timeout=timeout_s, limits=limits, trust_env=False)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.limiter = RateLimiter(requests_per_s)

    def close(self) -> None:
        self.http.close()

    def _backoff(self, attempt: int) -> float:
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)

    def chat(self, payload: dict) -> Reply:
        import httpx

        reply = Reply(ok=False)
        body = json.dumps(payload).encode()
        for attempt in range(self.max_retries + 1):
            self.limiter.wait()
            reply.attempts = attempt + 1
            start = time.monotonic()
            wait = None
            try:
                response = self.http.post(self.url, content=body)
                reply.latency_s = time.monotonic() - start
                reply.status = response.status_code
                if response.status_code == 200:
                    try:
                        parsed = response.json()
                        if not isinstance(parsed, dict) or not isinstance(parsed.get("choices"), list):
                            raise ValueError("no choices in the response")
                    except ValueError as err:
                        reply.reason, reply.error = "malformed_response", str(err)[:200]
                    else:
                        reply.ok, reply.body, reply.reason, reply.error = True, parsed, None, None
                        return reply
                else:
                    reply.reason = f"http_{response.status_code}"
                    reply.error = response.text[:200]
                    if response.status_code not in RETRY_STATUS:
                        return reply  # 400, 401, 403, 404, 422 ...: asking again will not help
                    if response.status_code in (429, 503):
                        wait = retry_after_s(response.headers.get("retry-after"))
                        if wait is not None:
                            reply.retry_after.append(wait)
            except httpx.TimeoutException as err:
                reply.latency_s = time.monotonic() - start
                reply.reason, reply.error = "timeout", str(err)[:200] or "timed out"
            except httpx.HTTPError as err:
                reply.latency_s = time.monotonic() - start
                reply.reason, reply.error = "connection_error", str(err)[:200]
            if attempt == self.max_retries:
                break
            pause = min(MAX_BACKOFF_S * 4, wait) if wait is not None else self._backoff(attempt)
            reply.retries += 1
            reply.waited_s += pause
            time.sleep(pause)
        return reply
