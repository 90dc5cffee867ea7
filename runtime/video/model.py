"""What the caption loop drives: a model split into prepare / encode / describe.

    prepare(image BGR [H, W, 3])  -> prepared   CPU only (decode, tile, resize, normalise); any thread
    encode(prepared)              -> encoded    the vision graph
    describe(encoded)             -> Generation iterate for text pieces; `.result` once exhausted
    encodes_concurrently          encode() may run on one thread while describe() runs on another
    overlaps_by_default           whether Cadence(overlap=None) prepares frame N+1 during caption N
    cancel() / resume()           end this model's caption in flight from another thread (other streams on
                                  the same FlashVL go on) and refuse new ones / allow them again
    enter_thread() / leave_thread()  bracket a thread that calls the model (TensorRT: the GPU context)

`FlashVLModel` implements it over a loaded FlashVL and one prompt; tests drive the loop with
fakes of the same shape.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from runtime.arguments import check_request
from runtime.errors import Cancelled
from runtime.sampling import SamplingConfig

CAPTION_MAX_NEW_TOKENS = 48  # a caption, not an essay: keeps the cadence up on a CPU


@dataclass(frozen=True)
class PromptConfig:
    """What each frame is asked (user choices, from the CLI edge or the app)."""

    prompt: str = "Describe the image."
    max_new_tokens: int = CAPTION_MAX_NEW_TOKENS
    sampling: SamplingConfig | None = None  # None: greedy
    system: str | None = None  # None: the manifest's
    iss: bool = True  # dynamic engines: ISS margin (False: plain dynamic cropping)

    def __post_init__(self):
        check_request(self.prompt, self.max_new_tokens, self.sampling, self.system, self.iss)


class FlashVLModel:
    """One stream's view of a shared FlashVL: its prompt, and its own caption to cancel."""

    def __init__(self, vl, prompt: PromptConfig):
        self.vl, self.p = vl, prompt
        self.encodes_concurrently = vl.encodes_concurrently
        self.overlaps_by_default = vl.overlaps_by_default
        self._lock = threading.Lock()
        self._current = None  # the Generation in flight
        self._cancelled = False

    def prepare(self, image):
        return self.vl.prepare_image(image, "bgr", self.p.iss)

    def encode(self, prepared):
        self._check()
        return self.vl.encode_prepared(prepared)

    def describe(self, encoded):
        self._check()
        gen = self.vl.stream(encoded, self.p.prompt, max_new_tokens=self.p.max_new_tokens,
                             sampling=self.p.sampling, system=self.p.system)
        with self._lock:
            self._current = gen
            if self._cancelled:
                gen.cancel()
        return gen

    def _check(self) -> None:
        if self._cancelled:
            raise Cancelled("cancelled")

    def cancel(self) -> None:
        """End this stream's caption in flight at the engine's next step (a vision call in flight finishes:
        it may carry other streams' images); later calls raise Cancelled until resume()."""
        with self._lock:
            self._cancelled = True
            if self._current is not None:
                self._current.cancel()

    def resume(self) -> None:
        with self._lock:
            self._cancelled = False
            self._current = None

    def enter_thread(self) -> None:
        self.vl.enter_thread()

    def leave_thread(self) -> None:
        self.vl.leave_thread()
