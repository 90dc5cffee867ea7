"""The scheduler with continuous batching: one engine loop per model owns the decoder.

    sequence.py   Sequence: one request's prompt, settings, slot, tokens and outcome
    scheduler.py  Scheduler: the bounded queue, the cache slots, and which step runs next
    engine.py     Engine: the loop thread that runs the steps; submit/cancel from any thread
    vision.py     VisionBatcher: concurrent images share vision graph calls
"""

from runtime.engine.engine import Engine
from runtime.engine.scheduler import Scheduler
from runtime.engine.sequence import Done, Sequence, Status
from runtime.engine.vision import VisionBatcher

__all__ = ["Done", "Engine", "Scheduler", "Sequence", "Status", "VisionBatcher"]
