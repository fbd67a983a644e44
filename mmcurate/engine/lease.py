"""The run lock on an object store, where there is no flock: a lease object that its holder renews.

`take` reads `.lock`: none, one whose holder is a process of this host that is gone (a run killed
with -9 resumed on the same machine), or one not renewed for `EXPIRES_S` (a holder elsewhere that
died) is taken over; any other is a ConfigError naming its holder. While held, a daemon thread
rewrites it every `RENEW_S`. Two runs starting within the same second on different hosts can both
take it: a store without conditional writes cannot say which PUT came first. Reading it back
after writing, and stopping on finding another's, narrows that window; it does not close it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

from mmcurate.schemas.errors import ConfigError

RENEW_S = 20.0
EXPIRES_S = 90.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    def __init__(self, path: Any):
        self.path = path
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "token": os.urandom(8).hex()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _write(self) -> None:
        self.path.write_text(json.dumps({**self.me, "renewed": time.time()}))

    def _free(self, held: dict | None) -> bool:
        if held is None or held.get("token") == self.me["token"]:
            return True
        if held.get("host") == self.me["host"]:
            return not _alive(int(held.get("pid", 0)))
        return time.time() - float(held.get("renewed", 0)) > EXPIRES_S

    def take(self) -> None:
        held = self._read()
        if not self._free(held):
            raise ConfigError(f"{self.path.parent}: run directory is in use by pid {held.get('pid')} on "
                              f"{held.get('host')} (its lease was renewed {time.time() - float(held.get('renewed', 0)):.0f} s ago)")
        self._write()
        back = self._read()
        if back is not None and back.get("token") != self.me["token"]:
            raise ConfigError(f"{self.path.parent}: run directory was just taken by pid {back.get('pid')} on {back.get('host')}")
        self._thread = threading.Thread(target=self._renew, name="mmcurate-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                self._write()
            except OSError:  # a store briefly unreachable: the next renewal tries again
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = self._read()
        if held is not None and held.get("token") == self.me["token"]:
            self.path.unlink()
