"""The teacher client on its own: what is retried, what is not, Retry-After forms, rate limit."""

from __future__ import annotations

import email.utils
import time

from mmcurate.clients.teacher import RateLimiter, TeacherClient, retry_after_s
from tests.teacher_double import FaultyTeacher

PAYLOAD = {"model": "m", "messages": [{"role": "user", "content": [
    {"type": "text", "text": "(for your orientation only): a red circle {marker}\nRespond with a JSON object"}]}]}


def ask(teacher, marker, **kw):
    client = TeacherClient(teacher.endpoint, "k", timeout_s=kw.pop("timeout_s", 1), max_retries=kw.pop("max_retries", 3),
                           max_concurrency=4, backoff_s=0.01, **kw)
    payload = {**PAYLOAD, "messages": [{"role": "user", "content": [
        {"type": "text", "text": PAYLOAD["messages"][0]["content"][0]["text"].format(marker=marker)}]}]}
    try:
        return client.chat(payload)
    finally:
        client.close()


def test_transient_faults_are_retried_and_final_ones_are_not(tripwire):
    with FaultyTeacher() as teacher:
        assert ask(teacher, "").ok
        reply = ask(teacher, "[500]")
        assert reply.ok and reply.attempts == 2
        reply = ask(teacher, "[malformed]")
        assert reply.ok and reply.retries == 1
        reply = ask(teacher, "[400]")
        assert not reply.ok and reply.reason == "http_400" and reply.attempts == 1
        start = time.monotonic()
        reply = ask(teacher, "[429]")
        assert reply.ok and reply.retry_after == [1.0] and time.monotonic() - start >= 1.0
        reply = ask(teacher, "[slow]", timeout_s=0.5, max_retries=0)
        assert not reply.ok and reply.reason == "timeout"


def test_unreachable_endpoint_is_a_reason_not_an_exception(tripwire):
    client = TeacherClient("http://127.0.0.1:9/v1", None, timeout_s=0.5, max_retries=1, max_concurrency=1, backoff_s=0.01)
    reply = client.chat(PAYLOAD)
    assert not reply.ok and reply.reason == "connection_error" and reply.attempts == 2


def test_retry_after_forms():
    assert retry_after_s("3") == 3.0 and retry_after_s(None) is None and retry_after_s("soon") is None
    later = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.5 <= retry_after_s(later) <= 5.5


def test_rate_limiter_spaces_request_starts():
    limiter = RateLimiter(20)
    delays = [limiter.delay() for _ in range(5)]  # five requests arriving at once
    assert delays[0] < 0.01 and all(0.04 <= b - a <= 0.06 for a, b in zip(delays, delays[1:]))
    assert RateLimiter(None).delay() == 0.0
