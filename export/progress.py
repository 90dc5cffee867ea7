"""Progress lines on stderr for the export's long steps (full-size loads take minutes)."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

_T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


@contextmanager
def step(msg: str):
    say(msg + " ...")
    t = time.perf_counter()
    yield
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
