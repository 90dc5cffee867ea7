"""A stand-in for the caption model with the loop's interface (runtime.video.model), for tests of
the loop's behaviour (cadence, overlap, backlog, stop) without the cost of a real model.

Each caption names the frame it saw: the frame's mean gray level, so a test can tell which frame
was captioned.  Calls are timed and recorded per thread; `cancel()` wakes a blocked call the way
ONNX Runtime's terminate flag does (it raises Cancelled)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from runtime.errors import Cancelled


@dataclass
class FakeTimings:
    prefill_ms: float = 1.0
    decode_ms: float = 2.0


@dataclass
class FakeResult:
    text: str
    token_ids: list
    finish_reason: str = "stop"
    timings: FakeTimings = field(default_factory=FakeTimings)


@dataclass
class FakeEncoded:
    gray: int
    preprocess_ms: float = 0.5
    vision_ms: float = 1.0


class FakeGeneration:
    def __init__(self, model, enc: FakeEncoded):
        self.model, self.enc, self.result = model, enc, None

    def __iter__(self):
        text = f"gray {self.enc.gray}"
        self.model._sleep(self.model.describe_s, "describe")
        for word in text.split(" "):
            yield word + " "
        self.result = FakeResult(text + " ", [1] * len(text.split(" ")))


class FakeModel:
    def __init__(self, encode_s: float = 0.0, describe_s: float = 0.0, encodes_concurrently: bool = True):
        self.encode_s, self.describe_s = encode_s, describe_s
        self.encodes_concurrently = encodes_concurrently
        self.overlaps_by_default = True  # as if its vision ran on its own device
        self.calls: list[tuple[str, float, float, str]] = []  # (what, start, end, thread name)
        self.cancelled = threading.Event()
        self.resumed = 0
        self.threads_entered: list[str] = []
        self.started: list[str] = []  # calls as they begin
        self._lock = threading.Lock()

    def _sleep(self, seconds: float, what: str) -> None:
        t0 = time.perf_counter()
        self.started.append(what)
        if self.cancelled.wait(seconds):
            raise Cancelled(what)
        with self._lock:
            self.calls.append((what, t0, time.perf_counter(), threading.current_thread().name))

    def prepare(self, image: np.ndarray):
        return int(round(float(image.mean())))

    def encode(self, prepared) -> FakeEncoded:
        self._sleep(self.encode_s, "encode")
        return FakeEncoded(prepared)

    def describe(self, encoded: FakeEncoded) -> FakeGeneration:
        return FakeGeneration(self, encoded)

    def cancel(self) -> None:
        self.cancelled.set()

    def resume(self) -> None:
        self.cancelled.clear()
        self.resumed += 1

    def enter_thread(self) -> None:
        self.threads_entered.append(threading.current_thread().name)

    def leave_thread(self) -> None:
        pass

    def spans(self, what: str) -> list[tuple[float, float]]:
        with self._lock:
            return [(a, b) for w, a, b, _ in self.calls if w == what]


def gray_frames(levels, size=(48, 64)) -> list[np.ndarray]:
    """Uniform BGR frames, one per gray level."""
    return [np.full((*size, 3), int(v), np.uint8) for v in levels]
