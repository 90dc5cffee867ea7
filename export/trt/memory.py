"""Peak memory while a block runs: host RSS of this process and device memory in use.

    with PeakMemory(device_used=lambda: total - free) as peak:
        build()
    peak.host_bytes, peak.device_bytes      # -1 where it could not be measured

A thread samples every `interval_s`: /proc/self/status VmRSS for the host (Linux, as on
Jetson), and the given callable (cudaMemGetInfo's total - free) for the device.  On Jetson the
GPU shares the DRAM, so "device" there is memory the whole system uses, not just this process.
Sampling can miss a spike shorter than the interval; VmHWM (the kernel's own high-water mark
of this process) is read at the end as well, so the host figure is never below the true peak
of the process, only possibly above the block's (if an earlier block peaked higher).
"""

from __future__ import annotations

import threading
from typing import Callable


def read_status_kb(field: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM), in bytes; -1 when unavailable."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return -1


class PeakMemory:
    def __init__(self, device_used: Callable[[], int] | None = None, interval_s: float = 0.05):
        self.device_used = device_used
        self.interval_s = interval_s
        self.host_bytes = -1
        self.device_bytes = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def _sample(self) -> None:
        self.host_bytes = max(self.host_bytes, read_status_kb("VmRSS"))
        if self.device_used is not None:
            try:
                self.device_bytes = max(self.device_bytes, int(self.device_used()))
            except Exception:  # a failing probe must not break the build it watches
                self.device_used = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.host_bytes = max(self.host_bytes, read_status_kb("VmHWM"))
