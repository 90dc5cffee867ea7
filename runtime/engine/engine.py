"""The engine loop: one thread owns the decoder; every request is a Sequence handed to it.

    caller threads: submit(seq) -> read seq.out            engine thread: loop
                                                             step = scheduler.schedule()
                                                             Prefill: decoder.prefill(slot, rows, pos)
                                                                      (last chunk: sample the first token)
                                                             Decode:  decoder.decode(last tokens of slots 0..n-1)
                                                                      sample each, hand it out, finished ones leave

A cancelled sequence leaves before the next step; if every sequence of the call in flight is cancelled,
the call itself is interrupted (ONNX Runtime stops between nodes) and the step is scheduled anew without
them.  A failing call fails the sequences it carried, and the loop goes on serving the others.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from runtime.backend import DecoderEngine
from runtime.embedding import TokenEmbedding
from runtime.engine.scheduler import Decode, Prefill, Scheduler
from runtime.engine.sequence import Sequence, Status
from runtime.engine.stats import EngineStats
from runtime.errors import Cancelled, FlashVLError, QueueFull

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, decoder: DecoderEngine, embed: TokenEmbedding, max_batch: int, max_queue: int,
                 prefill_chunk: int, enter_thread=None, leave_thread=None):
        self.decoder, self.embed = decoder, embed
        self._enter, self._leave = enter_thread, leave_thread  # TensorRT: the GPU context on the loop's thread
        self._calls: list = []  # call_between_steps(): (function, box), run by the loop before its next step
        self.scheduler = Scheduler(max_batch, max_queue, prefill_chunk)
        self._cond = threading.Condition()
        self._in_flight: tuple[Sequence, ...] = ()  # the sequences of the decoder call running now
        self._interrupted = False  # we stopped the call in flight (decoder.cancel()); resume before the next
        self._paused = False  # cancel_all() until resume(): new sequences are refused as cancelled
        self._closed = False
        self._error: BaseException | None = None  # the loop itself died (a bug): every caller hears of it
        self.stats = EngineStats()
        self._thread = threading.Thread(target=self._loop, name="flash-vl-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ any thread

    def submit(self, seq: Sequence) -> None:
        with self._cond:
            if self._error is not None:
                raise FlashVLError(f"this FlashVL's engine loop stopped ({type(self._error).__name__}: "
                                   f"{self._error}); load the engine folder again") from self._error
            if self._closed:
                raise FlashVLError("this FlashVL is closed; load the engine folder again")
            if self._paused:
                raise Cancelled("cancelled: FlashVL.cancel() was called; call resume() to serve requests again")
            s = self.scheduler
            if s.queue_full():
                raise QueueFull(f"request queue full: {len(s.waiting)} requests wait and {s.max_batch - s.slots.count(None)}"
                                f" are being served; retry later, or load with a larger max_queue (now {s.max_queue})"
                                f" or max_batch")
            s.add(seq)
            self._cond.notify()

    def cancel(self, seq: Sequence) -> None:
        """End one sequence at the engine's next step (its reader gets Cancelled)."""
        with self._cond:
            if seq.status is Status.FINISHED:
                return
            seq.cancelled = True
            if self._in_flight and all(s.cancelled for s in self._in_flight):
                self._interrupt()
            self._cond.notify()

    def cancel_all(self) -> None:
        """FlashVL.cancel(): every sequence ends, and new ones are refused until resume()."""
        with self._cond:
            self._paused = True
            self._cancel_everything()

    def resume(self) -> None:
        with self._cond:
            self._paused = False

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cancel_everything()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _cancel_everything(self) -> None:
        """Under the lock: every sequence is cancelled and the call in flight stopped."""
        for seq in self.scheduler.all():
            seq.cancelled = True
        if self._in_flight:
            self._interrupt()
        self._cond.notify()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def call_between_steps(self, fn):
        """Run fn() on the engine's thread between two steps and return its result (TensorRT's vision plan
        shares the decoder's CUDA stream, so it runs there)."""
        if threading.current_thread() is self._thread:
            return fn()
        box = {"done": threading.Event()}
        with self._cond:
            if self._closed or self._error is not None:
                raise FlashVLError("this FlashVL is closed; load the engine folder again")
            self._calls.append((fn, box))
            self._cond.notify()
        box["done"].wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _run_calls(self) -> None:
        with self._cond:
            calls, self._calls = self._calls, []
        for fn, box in calls:
            try:
                box["value"] = fn()
            except BaseException as e:
                box["error"] = e
            box["done"].set()

    def _interrupt(self) -> None:
        if not self._interrupted and hasattr(self.decoder, "cancel"):
            self._interrupted = True
            self.decoder.cancel()

    # ------------------------------------------------------------------ the engine thread

    def _loop(self) -> None:
        try:
            if self._enter is not None:
                self._enter()
            while True:
                self._run_calls()
                with self._cond:
                    step = self._next_step()
                    if step is None:
                        if self._closed and not self.scheduler.busy and not self._calls:
                            return
                        continue
                    self._in_flight = (step.seq,) if isinstance(step, Prefill) else step.seqs
                try:
                    self._run(step)
                except Cancelled:
                    pass  # interrupted for cancelled sequences: they are reaped, the rest is scheduled anew
                except Exception as e:  # the call failed: its sequences end with the error, the others go on
                    log.debug("decoder call failed", exc_info=True)
                    with self._cond:
                        for seq in self._in_flight:
                            self._end(seq, FlashVLError(f"the decoder call failed: {e}"), cause=e)
                finally:
                    with self._cond:
                        self._in_flight = ()
                        if self._interrupted:
                            self._interrupted = False
                            self.decoder.resume()
        except BaseException as e:  # a bug in the loop, or no GPU context: fail everyone rather than hang them
            log.exception("the engine loop stopped")
            with self._cond:
                self._error = e
                for seq in self.scheduler.all():
                    self._end(seq, FlashVLError(f"the engine loop stopped ({type(e).__name__}: {e})"), cause=e)
        finally:
            self._fail_calls()
            if self._leave is not None:
                self._leave()

    def _next_step(self) -> Prefill | Decode | None:
        """Under the lock: reap cancelled sequences, then the next step; wait while there is none.  None when
        a call_between_steps() is due or the engine is closed and idle."""
        while True:
            self._reap()
            if self._calls or (self._closed and not self.scheduler.busy):
                return None
            step = self.scheduler.schedule()
            if step is not None:
                return step
            self._cond.wait()

    def _fail_calls(self) -> None:
        with self._cond:
            calls, self._calls = self._calls, []
        for _, box in calls:
            box["error"] = FlashVLError("this FlashVL is closed; load the engine folder again")
            box["done"].set()

    def _reap(self) -> None:
        for seq in self.scheduler.all():
            if seq.cancelled:
                self._end(seq, Cancelled("cancelled: the FlashVL was closed" if self._closed else "cancelled"))

    def _end(self, seq: Sequence, error: BaseException | None = None, cause: BaseException | None = None) -> None:
        """Under the lock: the sequence leaves its slot and its reader gets Done (each reader its own error
        object, so tracebacks raised on different threads do not pile onto one)."""
        self.scheduler.release(seq)
        if error is not None and cause is not None:
            error.__cause__ = cause
        if seq.status is not Status.FINISHED:
            seq.finish(error)

    def _run(self, step) -> None:
        if isinstance(step, Prefill):
            self._prefill(step)
        else:
            self._decode(step)

    def _prefill(self, step: Prefill) -> None:
        seq = step.seq
        rows = seq.prompt_embeds[step.start:step.end][None]  # [1, chunk, D]
        t0 = time.perf_counter()
        logits = self.decoder.prefill(seq.slot, rows, step.start)  # [1, V]
        dt = time.perf_counter() - t0
        seq.timings.prefill_ms += dt * 1e3
        self.stats.prefill(step.end - step.start, dt)
        seq.pos = step.end
        if seq.pos < seq.prompt_len or seq.cancelled:
            return
        token = self._sample(seq, logits[0])
        with self._cond:
            self.scheduler.prefilled(seq)
            self._publish(seq, token)

    def _decode(self, step: Decode) -> None:
        n = step.width
        x = np.zeros((n, 1, self.embed.table.shape[1]), np.float32)  # [n, 1, D]: idle slots get zeros
        positions = np.array([self.scheduler.filled(k) for k in range(n)], np.int64)  # [n]
        slots = np.array([s.slot for s in step.seqs])
        x[slots, 0] = self.embed.table[np.array([s.last_token for s in step.seqs])]  # the tokens sampled last
        t0 = time.perf_counter()
        logits = self.decoder.decode(x, positions)  # [n, V]
        self.stats.decode(len(step.seqs), time.perf_counter() - t0)
        tokens = []
        for seq in step.seqs:  # sampling needs no lock: only this thread touches a sequence's history
            seq.pos += 1
            tokens.append(None if seq.cancelled else self._sample(seq, logits[seq.slot]))
        with self._cond:
            for seq, token in zip(step.seqs, tokens):
                self._publish(seq, token)

    def _sample(self, seq: Sequence, logits: np.ndarray) -> int | FlashVLError:
        try:
            return seq.sampler.sample(logits, seq.history[:seq.prompt_len + seq.n_generated])
        except FlashVLError as e:  # NaN logits and the like: this sequence's problem
            return e

    def _publish(self, seq: Sequence, token) -> None:
        """Under the lock: hand a sampled token (or the sampling error) to the reader; end the sequence if done."""
        if token is None or seq.cancelled:
            return
        if isinstance(token, FlashVLError):
            self._end(seq, token)
            return
        seq.append(token)
        if seq.finish_reason:
            self._end(seq)
