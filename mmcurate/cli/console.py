"""What a command shows while it works: progress lines per stage, and stderr kept free of other
libraries' noise unless -v."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time


class LineProgress:
    """One line per stage on stderr: shards done / total, rows, rows/s.

    On a terminal the lines of the stages running at once (a streaming segment) update together,
    redrawn in place a few times a second (rich); in a log file each stage gets a line every
    `interval_s` and one when it ends. Events may come from the engine's watcher thread.
    """

    def __init__(self, stream=sys.stderr, interval_s: float = 5.0):
        self.stream = stream
        self.live = stream.isatty()
        self.interval_s = interval_s
        self._state: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._screen = None

    def begin(self, stage: str, total: int, done: int) -> None:
        with self._lock:
            now = time.perf_counter()  # the first line after interval_s (or at the end): none for a stage done before
            self._state[stage] = {"total": total, "done": done, "before": done, "rows": 0, "start": now, "shown": now,
                                  "end": None}
        if self.live and self._screen is None:
            from rich.console import Console
            from rich.live import Live

            # a terminal when made, whatever stderr's descriptor became since (see without_ray_noise)
            self._screen = Live(self, console=Console(file=self.stream, force_terminal=True), refresh_per_second=4,
                                transient=False)
            self._screen.start()
        self._draw(stage, final=False)

    def advance(self, stage: str, stats: dict) -> None:
        with self._lock:
            st = self._state[stage]
            st["done"] += 1
            st["rows"] += stats.get("rows_in", 0)
        self._draw(stage, final=False)

    def end(self, stage: str) -> None:
        with self._lock:
            self._state[stage]["end"] = time.perf_counter()
        self._draw(stage, final=True)

    def close(self) -> None:
        """Leave the last picture on the terminal."""
        if self._screen is not None:
            self._screen.stop()
            self._screen = None

    def line(self, stage: str) -> str:
        st = self._state[stage]
        elapsed = max((st["end"] or time.perf_counter()) - st["start"], 1e-9)
        total = st["total"] if st["total"] else st["done"]
        if st["total"] and st["before"] == st["done"] == total:
            return f"{stage:<18} {st['done']:>6}/{total:<6} shards  done in an earlier run"
        return f"{stage:<18} {st['done']:>6}/{total:<6} shards  {st['rows']:>10,} rows  {st['rows'] / elapsed:>9,.0f} rows/s"

    def __rich__(self):
        from rich.text import Text

        with self._lock:
            return Text("\n".join(self.line(stage) for stage in self._state))

    def _draw(self, stage: str, final: bool) -> None:
        if self.live:
            return  # the live screen redraws itself
        with self._lock:
            st = self._state[stage]
            now = time.perf_counter()
            if not final and (now - st["shown"] < self.interval_s or st["total"] == 0):
                return
            st["shown"] = now
            text = self.line(stage)
        self.stream.write(text + "\n")
        self.stream.flush()


def progress_of(args) -> contextlib.AbstractContextManager:
    """The progress display of a command, closed (its last picture left) when the command ends."""
    from mmcurate.jobs.run import NoProgress

    return contextlib.nullcontext(NoProgress()) if args.quiet else contextlib.closing(LineProgress())


# What other libraries write to stderr for no one running mmcurate, kept out unless -v: Ray's C++ and
# Python log lines below error, and ray#53727's note on every actor pool (an "E" line, but harmless),
# tqdm bars (datasets'), third-party warnings; from a worker, "(MapWorker(...) pid=123) " first.
_WORKER = re.compile(rb"^(?:\x1b\[[\d;]*m)?\((?:raylet|gcs_server|[^\n]*?pid=\d+(?:, ip=[^)\s]*)?)\)(?:\x1b\[[\d;]*m)? ?")
_NOISE = re.compile(rb"^\[\d{4}-\d\d-\d\d [\d:]+[,.]\d+ (?:[TDIW]|E \d+ \d+\] core_worker\.cc:\d+: Actor with class "
                    rb"name: .* has constructor arguments in the object store and max_restarts > 0)"  # not E, C, F
                    rb"|^\d{4}-\d\d-\d\d [\d:]+,\d+\s+(?:DEBUG|INFO|WARNING)\s+\S+:\d+ -- "  # Ray's Python logging
                    rb"|\[\d+:\d\d(?::\d\d)?(?:<[^\]]*)?,[^\]]*(?:/s|/it)\]")  # tqdm's [elapsed<left, rate]
_WARNING = re.compile(rb"^\S*(?:site-packages|dist-packages)/\S+:\d+: \w*Warning: ")


class NoiseFilter:
    """Which stderr lines to pass on: all but `_NOISE`, `_WARNING` and a warning's indented source line."""
    _in_warning = False

    def keep(self, line: bytes) -> bool:
        body = line[m.end():] if (m := _WORKER.match(line)) else line
        if self._in_warning and body[:1] in (b" ", b"\t"):
            return False
        self._in_warning = bool(_WARNING.match(body))
        return not (self._in_warning or _NOISE.search(body))


@contextlib.contextmanager
def without_ray_noise(verbose: bool = False):
    """While a run goes: file descriptor 2 (Ray's C++ core writes there, not to sys.stderr) through
    `NoiseFilter`; not with -v, nor where stderr is not the process's own (a test harness's)."""
    if verbose or sys.stderr is not sys.__stderr__:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def pump() -> None:
        noise = NoiseFilter()
        with os.fdopen(read, "rb") as lines, os.fdopen(os.dup(saved), "wb", buffering=0) as out:
            out.writelines(line for line in lines if noise.keep(line))

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer closes: the pump reads to its end and stops
        os.close(saved)
        thread.join(timeout=5)
