"""A deadline for one download attempt, whatever the server does.

A socket timeout bounds each read, not the whole: a server that sends a byte every few seconds
(a tarpit, or a very sick host) keeps each read under the timeout and can hold a download thread
for days, in the TLS handshake, the headers or the body. Every socket an attempt opens (redirect
hops included) is tracked; when the attempt's time is up, one watchdog thread shuts them down,
which ends any read in progress, and the attempt reports that its deadline passed.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_current = threading.local()


class Attempt:
    """The sockets of one attempt, and whether its deadline passed."""

    def __init__(self) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def finish(self) -> None:
        """Forget the sockets: a cancelled entry stays in the watchdog's heap until it is due."""
        with self._lock:
            self._sockets = []


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read; close() alone would not
    except OSError:
        pass  # not connected yet, or already closed: nothing is blocked on it


def track(sock: socket.socket) -> None:
    """Put `sock` under the deadline of the attempt running in this thread, if any."""
    attempt = getattr(_current, "attempt", None)
    if attempt is not None:
        attempt.track(sock)


class _Watchdog:
    """One thread that runs callbacks at their times; cancelled ones are dropped when due."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, when: float, callback: Callable[[], None]) -> int:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="download-deadlines", daemon=True)
                self._thread.start()
            token = next(self._ids)
            heapq.heappush(self._heap, (when, token, callback))
            self._cond.notify()
            return token

    def cancel(self, token: int) -> None:
        with self._cond:
            self._cancelled.add(token)

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] in self._cancelled:
                    self._cancelled.discard(heapq.heappop(self._heap)[1])
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                _, token, callback = heapq.heappop(self._heap)
                callback()


_WATCHDOG = _Watchdog()


@contextmanager
def deadline(seconds: float) -> Iterator[Attempt]:
    """Run one attempt in this thread: sockets it opens are shut down `seconds` from now."""
    attempt = Attempt()
    _current.attempt = attempt
    token = _WATCHDOG.add(time.monotonic() + seconds, attempt.expire)
    try:
        yield attempt
    finally:
        _WATCHDOG.cancel(token)
        attempt.finish()
        _current.attempt = None
