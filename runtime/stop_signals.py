"""SIGTERM and SIGHUP stop a run the way Ctrl-C does, so a service stop never costs the output.

systemd, docker and supervisors stop a process with SIGTERM (and a closed terminal sends SIGHUP),
whose default action ends Python at once: no finally block runs, a --save video has no moov atom
and will not play, the last captions and the summary are lost.  Inside `stopping_on_signals()`
both raise `Stopped`, a KeyboardInterrupt, so every `except KeyboardInterrupt` / `finally` path
that Ctrl-C already takes runs for them too.

    with stopping_on_signals():
        ...                       # Ctrl-C, SIGTERM, SIGHUP -> KeyboardInterrupt (Stopped for the last two)
    exit_code(e)                  # 128 + the signal's number: 130 (INT), 143 (TERM), 129 (HUP), as a shell reports
    exit(main())                  # in __main__: a stopped run then ends by its signal (systemd: a clean stop)
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import NoReturn

STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)


class Stopped(KeyboardInterrupt):
    """A stop signal other than SIGINT arrived."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, frame):
    if signum == getattr(signal, "SIGHUP", None):  # the terminal is gone: writing to it would fail with EIO
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            if os.isatty(fd):
                os.dup2(devnull, fd)
        os.close(devnull)
    raise Stopped(signum)


@contextmanager
def stopping_on_signals():
    """SIGTERM/SIGHUP raise Stopped in the main thread while inside; the previous handlers come back after.
    Elsewhere than the main thread (Python delivers signals to it only) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_stopped) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def deferred_stops():
    """While inside, Ctrl-C and the stop signals are ignored: a flush that has begun (the last captions,
    the video's moov atom) is not cut short by a second signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def describe(e: KeyboardInterrupt) -> str:
    return f"stopped by {signal.Signals(e.signum).name}" if isinstance(e, Stopped) else "interrupted"


def exit_code(e: KeyboardInterrupt) -> int:
    return 128 + (e.signum if isinstance(e, Stopped) else signal.SIGINT)


def exit(code: int) -> NoReturn:
    """sys.exit(code); but a run that a signal stopped (code 128 + signal), once it has finished its output,
    ends by that signal's default action, as Python itself does after Ctrl-C: a shell then shows 130, 143 or
    129, and systemd counts a SIGTERM stop as clean (an exit status of 143 would mark the unit failed)."""
    sig = code - 128
    if sig in (signal.SIGINT, *STOP_SIGNALS) and threading.current_thread() is threading.main_thread():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):  # closed, or None
                pass
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    sys.exit(code)
