"""One request inside the engine: its prompt, its settings, its slot, its tokens.

    WAITING  (queued; no slot)  --admit-->  PREFILL (a slot; prompt rows written chunk by chunk)
      --last chunk: first token sampled-->  RUNNING (one token per decode step)  -->  FINISHED

The caller's thread reads `out`, a queue of token ids ending with a `Done` (finish reason, or the
exception that ended the sequence); the engine's thread writes it.  `cancel()` may come from any thread;
the engine acts on it at its next step.
"""

from __future__ import annotations

import itertools
import queue
import time
from dataclasses import dataclass
from enum import Enum

import numpy as np

from runtime.generate import Timings
from runtime.sampling import Sampler

_ids = itertools.count()


class Status(Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class Done:
    """The end of a sequence's token stream: why it ended, or what it raised."""

    finish_reason: str = ""  # "stop" | "length" | "" with an error
    error: BaseException | None = None


class Sequence:
    def __init__(self, prompt_ids: np.ndarray, prompt_embeds: np.ndarray, sampler: Sampler, max_new_tokens: int,
                 stop_ids: tuple[int, ...], max_seq_len: int, timings: Timings, t_start: float):
        self.id = next(_ids)
        self.prompt_embeds = prompt_embeds  # [P, D] f32, dropped once prefilled
        self.prompt_len = len(prompt_ids)
        self.steps = min(max_new_tokens, max_seq_len - self.prompt_len + 1)  # the last token needs no cache row
        self.history = np.empty(self.prompt_len + self.steps, np.int64)  # [P + steps]: prompt, then generated ids
        self.history[:self.prompt_len] = prompt_ids
        self.sampler, self.stop_ids = sampler, stop_ids
        self.timings, self.t_start = timings, t_start  # t_start: perf_counter() when the request began
        self.t_submit = time.perf_counter()
        self.t_first = self.t_last = 0.0  # perf_counter() at the first and the latest token
        self.status = Status.WAITING
        self.slot = -1
        self.pos = 0  # cache rows written: prompt rows during PREFILL, then prompt + generated - 1
        self.n_generated = 0
        self.finish_reason = ""
        self.cancelled = False  # set by any thread; the engine ends the sequence at its next step
        self.out: queue.SimpleQueue = queue.SimpleQueue()  # int token ids, then one Done

    @property
    def last_token(self) -> int:
        return int(self.history[self.prompt_len + self.n_generated - 1])

    def append(self, token: int) -> None:
        """Record a sampled token, hand it to the caller, and decide whether the sequence ends."""
        now = time.perf_counter()
        self.history[self.prompt_len + self.n_generated] = token
        self.n_generated += 1
        if self.n_generated == 1:
            self.t_first = now
            self.timings.ttft_ms = (now - self.t_start) * 1e3
        else:
            self.timings.decode_ms = (now - self.t_first) * 1e3  # wall time from the first token to this one
            self.timings.decode_steps = self.n_generated - 1
            self.timings.max_token_gap_ms = max(self.timings.max_token_gap_ms, (now - self.t_last) * 1e3)
        self.t_last = now
        self.out.put(token)
        if token in self.stop_ids:
            self.finish_reason = "stop"
        elif self.n_generated >= self.steps:
            self.finish_reason = "length"

    def finish(self, error: BaseException | None = None) -> None:
        self.status = Status.FINISHED
        self.prompt_embeds = None
        self.out.put(Done(self.finish_reason, error))
