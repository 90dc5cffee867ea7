"""Which sequences the next decoder call carries (nano-vllm's scheduler, for one CPU or GPU stream).

    submit -> waiting (bounded FIFO) -> a free slot -> prefilling -> running -> finished (slot freed)

Each call of `schedule()` picks one step:
  - a prefill chunk of the oldest prefilling sequence, when no sequence is decoding (then the whole
    rest of its prompt in one call: nobody waits) or when the last step was a decode step;
  - otherwise one decode step over every running sequence.
So while sequences decode, a long prompt is written `prefill_chunk` rows at a time, one chunk between
two decode steps: a 300-token image prompt delays the others' tokens by one chunk's time per step, not
by its whole prefill.  Slots are the lowest free ones, so a decode step carries slots 0..n-1 with few
idle ones among them.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from runtime.engine.sequence import Sequence, Status


@dataclass(frozen=True)
class Prefill:
    seq: Sequence
    start: int  # prompt rows start..end-1
    end: int


@dataclass(frozen=True)
class Decode:
    seqs: tuple[Sequence, ...]  # every running sequence, by slot
    width: int  # slots 0..width-1 take part


class Scheduler:
    def __init__(self, max_batch: int, max_queue: int, prefill_chunk: int):
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.waiting: deque[Sequence] = deque()
        self.prefilling: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.slots: list[Sequence | None] = [None] * max_batch
        self._decoded_last = False  # the last step was a decode step: a prefill chunk may go next

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running)

    def queue_full(self) -> bool:
        """No room for one more: the waiting sequences fill the free slots (which they take at the next step)
        and max_queue places beyond them."""
        return len(self.waiting) >= self.max_queue + self.slots.count(None)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> Prefill | Decode | None:
        self._admit()
        if self.prefilling and (not self.running or self._decoded_last):
            seq = self.prefilling[0]
            rest = seq.prompt_len - seq.pos
            chunk = rest if not self.running or self.prefill_chunk <= 0 else min(rest, self.prefill_chunk)
            self._decoded_last = False
            return Prefill(seq, seq.pos, seq.pos + chunk)
        if self.running:
            self._decoded_last = True
            return Decode(tuple(self.running), max(s.slot for s in self.running) + 1)
        return None

    def _admit(self) -> None:
        """Waiting sequences take the lowest free slots, first come first served."""
        while self.waiting and None in self.slots:
            seq = self.waiting.popleft()
            seq.slot = self.slots.index(None)
            self.slots[seq.slot] = seq
            seq.status = Status.PREFILL
            seq.timings.queue_ms = (time.perf_counter() - seq.t_submit) * 1e3
            self.prefilling.append(seq)

    def prefilled(self, seq: Sequence) -> None:
        """The prompt's last chunk is in: the sequence decodes from the next step on."""
        self.prefilling.remove(seq)
        seq.prompt_embeds = None  # its rows are in the cache now
        seq.status = Status.RUNNING
        self.running.append(seq)
        self.running.sort(key=lambda s: s.slot)

    def release(self, seq: Sequence) -> None:
        """A finished, cancelled or failed sequence leaves now and frees its slot."""
        for group in (self.waiting, self.prefilling):
            if seq in group:
                group.remove(seq)
        if seq in self.running:
            self.running.remove(seq)
        if 0 <= seq.slot < len(self.slots) and self.slots[seq.slot] is seq:
            self.slots[seq.slot] = None

    def all(self) -> list[Sequence]:
        return [*self.waiting, *self.prefilling, *self.running]

    def filled(self, slot: int) -> int:
        """Rows a slot holds (a decode step's position for a slot that is not decoding)."""
        seq = self.slots[slot]
        return 0 if seq is None else seq.pos
