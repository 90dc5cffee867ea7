"""Progress lines on stderr for long steps: export (full-size loads take minutes) and calibration.

    say(msg)                  one timestamped line
    step(msg)                 a context: announce, heartbeat every HEARTBEAT_S, duration
    counter(label)            a callback(i, n) printing at most every few seconds
    Bar(label, total)         a context with .advance(): count, percent, elapsed, time left

Standard library only: calib/ imports it where torch is not installed.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

_T0 = time.perf_counter()
HEARTBEAT_S = 15.0


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


@contextmanager
def step(msg: str):
    """Announce a step, say 'still ...' every HEARTBEAT_S seconds while it runs, then its duration."""
    say(msg + " ...")
    t = time.perf_counter()
    done = threading.Event()

    def beat():
        while not done.wait(HEARTBEAT_S):
            say(f"  still {msg} ({time.perf_counter() - t:.0f}s)")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    say(f"{msg}: done in {time.perf_counter() - t:.1f}s")


def counter(label: str, every_s: float = 5.0):
    """A callback(i, n) that prints `label i/n` at most every `every_s` seconds and at the end."""
    last = [0.0]

    def tick(i: int, n: int) -> None:
        now = time.perf_counter()
        if i == n or now - last[0] >= every_s:
            last[0] = now
            say(f"  {label} {i}/{n}")

    return tick


def _duration(s: float) -> str:
    """Seconds -> '42s', '12m05s' or '2h03m'."""
    s = max(0, int(round(s)))
    if s < 100:
        return f"{s}s"
    if s < 6000:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


class Bar:
    """`label done/total (pct%) Ns elapsed, ~Ns left` on stderr, for loops over known counts.

        with progress.Bar("calibrating", total=n) as bar:
            for item in items:
                ...
                bar.advance()

    On a terminal it redraws one line with '\\r' at most every TTY_EVERY_S; in a
    log (not a TTY) it prints a line at the start, at most every LOG_EVERY_S
    and at the end, so CI logs stay short. The time left is elapsed / done *
    remaining. `stream` and `clock` are for tests.
    """

    TTY_EVERY_S = 0.2
    LOG_EVERY_S = 5.0

    def __init__(self, label: str, total: int, stream=None, clock=time.perf_counter):
        self.label, self.total, self.done = label, int(total), 0
        self._stream = sys.stderr if stream is None else stream
        self._clock = clock
        isatty = getattr(self._stream, "isatty", None)
        self._tty = bool(isatty and isatty())
        self._start = self._last = 0.0
        self._width = 0  # length of the line on screen, to blank a longer previous one

    def __enter__(self) -> Bar:
        self._start = self._clock()
        self._draw(self._start, self.text(0.0))
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self._clock()
        if now - self._last >= (self.TTY_EVERY_S if self._tty else self.LOG_EVERY_S):
            self._draw(now, self.text(now - self._start))

    def __exit__(self, exc_type, exc, tb) -> None:
        now = self._clock()
        elapsed = _duration(now - self._start)
        ended = f"done in {elapsed}" if exc_type is None else f"stopped after {elapsed}"
        self._draw(now, f"{self._count()} {ended}")
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def text(self, elapsed: float) -> str:
        """The line without its timestamp, e.g. 'calibrating 12/50 (24%) 30s elapsed, ~95s left'."""
        line = f"{self._count()} {_duration(elapsed)} elapsed"
        if 0 < self.done < self.total:
            line += f", ~{_duration(elapsed / self.done * (self.total - self.done))} left"
        return line

    def _count(self) -> str:
        pct = f" ({100 * self.done // self.total}%)" if self.total > 0 else ""
        return f"{self.label} {self.done}/{self.total}{pct}"

    def _draw(self, now: float, text: str) -> None:
        self._last = now
        line = f"[{time.perf_counter() - _T0:7.1f}s] {text}"
        if self._tty:
            self._stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
