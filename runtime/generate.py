"""One sequence's KV-cached decode loop, and the timings every request reports.

FlashVL serves requests through runtime.engine (many sequences per decoder step); this loop is the same
work for one sequence on slot 0, top to bottom, which the single-request benchmark (runtime.bench.ours)
times as the baseline the engine's batched steps are compared with.

    prompt_ids [P] + image_embeds [1,N,D] --embed--> [1,P,D]
      -> decoder.forward(all P rows, pos=0)              prefill: cache rows 0..P-1, logits
      -> loop: sample -> yield -> stop? -> forward(embed(token), pos) -> pos += 1

The decoder owns the cache (see runtime.backend); this loop owns only `pos`, the token
history for the repetition penalty (preallocated) and the clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from runtime.backend import DecoderEngine
from runtime.embedding import TokenEmbedding
from runtime.errors import PromptError
from runtime.sampling import Sampler


@dataclass
class Timings:
    """Milliseconds; filled in as the generation runs."""

    queue_ms: float = 0.0  # waiting for a cache slot (the engine serves max_batch sequences at once)
    preprocess_ms: float = 0.0  # image decode + resize + normalise
    vision_ms: float = 0.0  # vision graph
    prefill_ms: float = 0.0  # decoder calls over the prompt (one, or one per chunk)
    ttft_ms: float = 0.0  # start of the request to the first token
    decode_ms: float = 0.0  # the first token to the last (steps shared with other sequences)
    max_token_gap_ms: float = 0.0  # the longest wait between two of its tokens (another prompt's prefill shows here)
    decode_steps: int = 0

    @property
    def decode_tokens_per_s(self) -> float | None:
        return self.decode_steps / (self.decode_ms / 1e3) if self.decode_steps and self.decode_ms > 0 else None

    def as_dict(self) -> dict:
        return {"queue_ms": round(self.queue_ms, 3), "preprocess_ms": round(self.preprocess_ms, 3), "vision_ms": round(self.vision_ms, 3),
                "prefill_ms": round(self.prefill_ms, 3), "ttft_ms": round(self.ttft_ms, 3),
                "decode_ms": round(self.decode_ms, 3), "max_token_gap_ms": round(self.max_token_gap_ms, 3),
                "decode_tokens_per_s": None if self.decode_tokens_per_s is None else round(self.decode_tokens_per_s, 3)}


@dataclass
class LoopState:
    """What the loop reports besides the tokens it yields."""

    timings: Timings
    t_start: float  # perf_counter() when the request began (for TTFT)
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = ""  # "stop" (a stop token), "length" (max_new_tokens or context full)


def check_prompt_fits(prompt_len: int, image_tokens: int, max_seq_len: int) -> None:
    if prompt_len > max_seq_len:
        raise PromptError(
            f"prompt is {prompt_len} tokens ({image_tokens} image + {prompt_len - image_tokens} text and template), "
            f"the engine's context window is {max_seq_len}; shorten the prompt or re-export with a larger "
            f"--max-seq-len")


def decode_loop(decoder: DecoderEngine, embed: TokenEmbedding, prompt_ids: np.ndarray,
                image_embeds: np.ndarray | None, sampler: Sampler, max_new_tokens: int,
                stop_ids: tuple[int, ...], state: LoopState) -> Iterator[int]:
    """Yield generated token ids; the stop token, if reached, is yielded too (callers hide it)."""
    prompt_len = len(prompt_ids)
    steps = min(max_new_tokens, decoder.max_seq_len - prompt_len + 1)  # the last token needs no cache row
    history = np.empty(prompt_len + steps, np.int64)  # [P + steps], prompt then generated ids
    history[:prompt_len] = prompt_ids
    t = state.timings

    # 1. prefill: the whole prompt in one call
    t0 = time.perf_counter()
    logits = decoder.forward(embed.prompt(prompt_ids, image_embeds), 0)  # [1, P, D] -> [1, V]
    t.prefill_ms = (time.perf_counter() - t0) * 1e3
    pos = prompt_len

    # 2. one token per step; a step is timed from its forward call to its sampled token
    n = 0
    t_step = 0.0
    while True:
        token = sampler.sample(logits[0], history[:pos])
        if n > 0:
            t.decode_ms += (time.perf_counter() - t_step) * 1e3
            t.decode_steps += 1
        history[pos] = token
        n += 1
        if n == 1:
            t.ttft_ms = (time.perf_counter() - state.t_start) * 1e3
        state.tokens.append(token)
        if token in stop_ids:
            state.finish_reason = "stop"
        elif n >= steps:
            state.finish_reason = "length"
        yield token
        if state.finish_reason:
            return
        t_step = time.perf_counter()
        logits = decoder.forward(embed.tokens(history[pos:pos + 1]), pos)  # [1, 1, D] -> [1, V]
        pos += 1
