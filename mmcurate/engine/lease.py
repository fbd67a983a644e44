"""The run lock on an object store, where there is no flock: a lease object that its holder renews.

`take` reads `.lock`. It is free when there is none, when it was not renewed for `EXPIRES_S` (a
holder anywhere that died or lost the store), or when its holder is a process of this machine,
since the same boot, that is gone (a run killed with -9 and resumed here: no wait). Any other is
a ConfigError naming its holder. While held, a daemon thread renews it every `RENEW_S`, reading
it first: a lease someone else took (this process stalled past `EXPIRES_S`) is never overwritten,
it marks this lease lost, and `check` (called by the run between steps) stops the run.

Two runs starting within the same second on different hosts can both take it: a store without
conditional writes cannot say which PUT came first. Reading it back after writing, and stopping
on finding another's, narrows that window; it does not close it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from mmcurate.schemas.errors import ConfigError

log = logging.getLogger(__name__)
RENEW_S = 20.0
EXPIRES_S = 90.0


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


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
        self.me = {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(), "token": os.urandom(8).hex()}
        self.lost: dict | None = None
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
        if time.time() - float(held.get("renewed", 0)) > EXPIRES_S:
            return True
        here = held.get("host") == self.me["host"] and held.get("boot") == self.me["boot"] and self.me["boot"]
        pid = int(held.get("pid", 0))
        # a pid reused since (a restarted container's mmcurate is pid 1 again) waits out EXPIRES_S
        return bool(here) and not _alive(pid)

    def take(self) -> None:
        held = self._read()
        if not self._free(held):
            raise ConfigError(f"{self.path.parent}: run directory is in use by pid {held.get('pid')} on "
                              f"{held.get('host')} (its lease was renewed {time.time() - float(held.get('renewed', 0)):.0f} s "
                              f"ago; a lease not renewed for {EXPIRES_S:.0f} s is taken over)")
        self._write()
        back = self._read()
        if back is not None and back.get("token") != self.me["token"]:
            raise ConfigError(f"{self.path.parent}: run directory was just taken by pid {back.get('pid')} on {back.get('host')}")
        self._thread = threading.Thread(target=self._renew, name="mmcurate-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                held = self._read()
                if held is not None and held.get("token") != self.me["token"]:
                    self.lost = held
                    log.error("%s: the run dir's lease was taken by pid %s on %s", self.path, held.get("pid"), held.get("host"))
                    return
                self._write()
            except Exception as err:  # a store briefly unreachable: the next renewal tries again
                log.warning("%s: lease not renewed (%s); retrying", self.path, err)

    def check(self) -> None:
        if self.lost is not None:
            raise ConfigError(f"{self.path.parent}: this run lost its lease to pid {self.lost.get('pid')} on "
                              f"{self.lost.get('host')} (it was not renewed for {EXPIRES_S:.0f} s): stopped")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()  # a renewal in flight ends before the lease is removed
        held = self._read()
        if held is not None and held.get("token") == self.me["token"]:
            self.path.unlink()
