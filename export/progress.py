"""Progress lines on stderr for the export's long steps (full-size loads take minutes)."""

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
