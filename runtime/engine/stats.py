"""Counters of the decoder calls an engine made: what the benchmark and a server's metrics read."""

from __future__ import annotations

import threading


class EngineStats:
    """Decode steps and their seconds by the number of sequences they carried; prefill calls and rows.
    Written by the engine's thread, read from any thread through snapshot()."""

    def __init__(self):
        self._lock = threading.Lock()
        self._decode: dict[int, list] = {}  # sequences in the step -> [steps, seconds]
        self._prefill = [0, 0, 0.0]  # calls, rows, seconds

    def decode(self, n: int, seconds: float) -> None:
        with self._lock:
            entry = self._decode.setdefault(n, [0, 0.0])
            entry[0] += 1
            entry[1] += seconds

    def prefill(self, rows: int, seconds: float) -> None:
        with self._lock:
            self._prefill[0] += 1
            self._prefill[1] += rows
            self._prefill[2] += seconds

    def decode_steps(self, n: int) -> tuple[int, float]:
        """(steps, seconds) of the decode steps that carried n sequences."""
        with self._lock:
            steps, seconds = self._decode.get(n, (0, 0.0))
        return steps, seconds

    def snapshot(self) -> dict:
        with self._lock:
            decode = {n: tuple(v) for n, v in sorted(self._decode.items())}
            calls, rows, seconds = self._prefill
        return {"decode_steps": {n: {"steps": c, "seconds": s, "tokens_per_s": n * c / s if s > 0 else None}
                                 for n, (c, s) in decode.items()},
                "prefill_calls": calls, "prefill_rows": rows, "prefill_seconds": seconds}
