"""Concurrent images share vision graph calls.

    thread A: encode(pixels_a) --+                      +--> rows of a
    thread B: encode(pixels_b) --+-> one vision call ---+--> rows of b      (if B queued while A's call ran,
                                     [ta+tb, 3, S, S]                        A's follower runs them together)

No thread of its own: the first caller that finds the graph idle runs every image queued by then (up to
`max_images`, oldest first; an image is all its tiles) in one call, and the others wait for their rows.  A
lone request runs at once, as before.  With max_images = 1, requests still queue instead of running the
graph side by side on the same cores.
"""

from __future__ import annotations

import copy
import threading

import numpy as np

from runtime.backend import VisionEngine
from runtime.errors import Cancelled


class _Job:
    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels  # [tiles, 3, S, S]
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False


class VisionBatcher:
    def __init__(self, vision: VisionEngine, max_images: int):
        self.vision, self.max_images = vision, max_images
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._busy = False
        self.calls = 0  # vision graph calls made, and images they carried (the benchmark reports them)
        self.images = 0

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        # [tiles, 3, S, S] -> [tiles, N, D]
        job = _Job(pixels)
        with self._cond:
            self._pending.append(job)
            while True:
                while not job.done and self._busy:
                    self._cond.wait()
                if job.done:
                    break
                batch = self._take()
                self._busy = True
                self._cond.release()
                try:
                    self._run(batch, job)
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
        if job.error is not None:
            raise job.error
        return job.result

    def _take(self) -> list[_Job]:
        """The oldest queued images, up to max_images."""
        batch, self._pending = self._pending[:self.max_images], self._pending[self.max_images:]
        return batch

    def _run(self, batch: list[_Job], leader: _Job) -> None:
        try:
            pixels = batch[0].pixels if len(batch) == 1 else np.concatenate([j.pixels for j in batch])  # [T, 3, S, S]
            out = self.vision.encode(pixels)  # [T, N, D]
        except Exception as e:  # each waiting thread raises its own copy (one object's traceback would grow)
            for job in batch:
                job.error, job.done = (e if job is leader else copy.copy(e).with_traceback(None)), True
            return
        except BaseException as e:  # Ctrl-C on the thread that ran the call: the others retry nothing, they end
            for job in batch:
                job.error = e if job is leader else Cancelled("cancelled: the thread running this vision call "
                                                              "was interrupted; retry the request")
                job.done = True
            raise
        self.calls += 1
        self.images += len(batch)
        start = 0
        for job in batch:
            job.result = out[start:start + len(job.pixels)]
            start += len(job.pixels)
            job.done = True
