"""runtime.stop_signals: SIGTERM and SIGHUP take Ctrl-C's path; handlers come back afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from runtime.stop_signals import Stopped, describe, exit_code, stopping_on_signals
from tests.conftest import ROOT


@pytest.mark.parametrize("sig, code, said", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                             (signal.SIGHUP, 129, "stopped by SIGHUP")])
def test_a_stop_signal_raises_stopped_inside_and_is_restored_after(sig, code, said):
    before = signal.getsignal(sig)
    with pytest.raises(KeyboardInterrupt) as e:  # every `except KeyboardInterrupt` path catches it
        with stopping_on_signals():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler's exception ends the sleep at once
    assert isinstance(e.value, Stopped) and exit_code(e.value) == code and describe(e.value) == said
    assert signal.getsignal(sig) == before
    assert exit_code(KeyboardInterrupt()) == 130 and describe(KeyboardInterrupt()) == "interrupted"


def test_a_signal_during_the_flush_is_ignored():
    """A second SIGTERM (or Ctrl-C) while the output is being finalised must not cut it short."""
    script = textwrap.dedent("""
        import os, signal, sys
        from runtime.stop_signals import deferred_stops, stopping_on_signals
        with stopping_on_signals():
            with deferred_stops():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)
                print("flushed", flush=True)
        print("handlers back:", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["flushed", "handlers back: True"]
