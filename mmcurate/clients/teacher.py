"""An OpenAI-compatible chat-completions client that survives a real teacher.

- bounded concurrency (the caller's semaphore over one event loop) and an optional
  requests-per-second limit shared by every request of a worker;
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
    """At most `per_s` request starts per second, across the tasks of one event loop."""

    def __init__(self, per_s: float | None):
        self.interval = 1.0 / per_s if per_s else 0.0
        self.next = 0.0

    def delay(self) -> float:
        """Reserve the next start slot; return how long to wait for it."""
        if not self.interval:
            return 0.0
        now = time.monotonic()
        start = max(now, self.next)
        self.next = start + self.interval
        return start - now


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
    """Async at heart (one event loop holds every request in flight: no thread per request),
    with `chat()` as a blocking front for one request at a time."""

    def __init__(self, endpoint: str, api_key: str | None, *, timeout_s: float, max_retries: int,
                 max_concurrency: int, requests_per_s: float | None = None, backoff_s: float = 0.5):
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.limiter = RateLimiter(requests_per_s)

    def session(self):
        """An aiohttp session for one event loop: keep-alive connections up to max_concurrency, no
        environment proxies (the endpoint is reached directly). aiohttp rather than httpx: httpcore's
        pool scans every connection on every request, which costs milliseconds of CPU per request
        at 64 connections (measured in bench/synthesis.py)."""
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.max_concurrency, limit_per_host=self.max_concurrency)
        return aiohttp.ClientSession(headers=self.headers, connector=connector, trust_env=False,
                                     timeout=aiohttp.ClientTimeout(total=self.timeout_s))

    def close(self) -> None:
        """Nothing held between calls (sessions live as long as one batch)."""

    def _backoff(self, attempt: int) -> float:
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)

    def chat(self, payload: dict) -> Reply:
        import asyncio

        async def one() -> Reply:
            async with self.session() as http:
                return await self.achat(http, payload)

        return asyncio.run(one())

    async def achat(self, http, payload: dict, slots=None) -> Reply:
        """One request with its retries; `slots` (an asyncio.Semaphore) is held only while a request
        is in flight, never while backing off, so a retry's wait does not idle the teacher."""
        import asyncio
        import contextlib

        import aiohttp

        reply = Reply(ok=False)
        body = json.dumps(payload).encode()
        for attempt in range(self.max_retries + 1):
            pause = self.limiter.delay()
            if pause:
                await asyncio.sleep(pause)
            reply.attempts = attempt + 1
            start = time.monotonic()
            wait = None
            try:
                async with slots or contextlib.nullcontext(), http.post(self.url, data=body) as response:
                    raw = await response.read()
                    status, retry_header = response.status, response.headers.get("Retry-After")
                reply.latency_s = time.monotonic() - start
                reply.status = status
                if status == 200:
                    try:
                        parsed = json.loads(raw)
                        if not isinstance(parsed, dict) or not isinstance(parsed.get("choices"), list):
                            raise ValueError("no choices in the response")
                    except ValueError as err:
                        reply.reason, reply.error = "malformed_response", str(err)[:200]
                    else:
                        reply.ok, reply.body, reply.reason, reply.error = True, parsed, None, None
                        return reply
                else:
                    reply.reason = f"http_{status}"
                    reply.error = raw[:200].decode("utf-8", "replace")
                    if status not in RETRY_STATUS:
                        return reply  # 400, 401, 403, 404, 422 ...: asking again will not help
                    if status in (429, 503):
                        wait = retry_after_s(retry_header)
                        if wait is not None:
                            reply.retry_after.append(wait)
            except TimeoutError as err:
                reply.latency_s = time.monotonic() - start
                reply.reason, reply.error = "timeout", str(err)[:200] or "timed out"
            except (aiohttp.ClientError, OSError) as err:
                reply.latency_s = time.monotonic() - start
                reply.reason, reply.error = "connection_error", str(err)[:200] or type(err).__name__
            if attempt == self.max_retries:
                break
            pause = min(MAX_BACKOFF_S * 4, wait) if wait is not None else self._backoff(attempt)
            reply.retries += 1
            reply.waited_s += pause
            await asyncio.sleep(pause)
        return reply
