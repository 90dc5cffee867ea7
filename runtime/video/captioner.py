"""The caption loop: the newest frame in, timestamped caption events out.

    CaptionStream(model, slot, cadence)           iterate it for CaptionEvents (and CaptionPieces, the
                                                  text as it is decoded, with pieces=True); stop() ends it
    open_stream(model, source, cadence)           open a source (capture.open_input) and start its stream

Several sources at once are several CaptionStreams over one model, one per source, their events
merged by runtime.video.streams; each event's `stream` names its source.

One model thread runs the loop below; a capture thread fills the slot (runtime.video.capture)
and the caller's thread only reads events, so Ctrl-C reaches the caller at once and stop()
cancels a graph call in flight.

    job = next_job()                     wait for the cadence, take the newest frame, gate, prepare+encode
    while job:
        repeat?    emit the last caption's id again; job = next_job(); continue
        encode     here, if the backend cannot encode while it decodes (TensorRT)
        overlap    a worker starts next_job() for frame N+1, timed to finish when caption N does
        describe   stream pieces, then the event for frame N
        job = the worker's job, or next_job() now

Cadence (`Cadence`): a frame is captioned when `interval` seconds have passed since the last
captioned frame on the frame clock (capture time for live sources, media time for files), and,
with `min_change`, when it differs from the last captioned frame by at least that much
(runtime.video.change).  An unchanged scene re-emits the last caption's id at most once per
max(interval, the last caption's duration): as often as the model would have captioned it.

Overlap: frame N+1 is grabbed `grab_delay()` after caption N starts, so its preparation ends
as caption N does and it is as fresh as a serial loop's would be.  It pays where preparing and
encoding run beside the decoder on idle hardware (TensorRT: the CPU prepares while the GPU
decodes), so that is the default there; on a CPU both halves want the same cores.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from runtime.arguments import check_bool, check_number
from runtime.errors import Cancelled, FlashVLError
from runtime.video.capture import Capture, FrameSlot, Input, open_input, source_kind
from runtime.video.change import scene_change, thumbnail
from runtime.video.frame import Frame, SourceStats

JSONL_VERSION = 1
_POLL_S = 0.1  # how often blocked waits look at the stop flag


@dataclass(frozen=True)
class Cadence:
    interval: float = 0.0  # seconds between captioned frames at least (0: as fast as the model goes)
    min_change: float | None = None  # None: caption every due frame; else the scene_change() it needs
    overlap: bool | None = None  # prepare (and encode) frame N+1 while decoding N; None: the model's default

    def __post_init__(self):
        check_number("--interval", self.interval)  # named as the rest of Cadence's messages
        if self.min_change is not None:
            check_number("--min-change", self.min_change)
        if self.overlap is not None:
            check_bool("overlap", self.overlap)
        if not 0 <= self.interval < float("inf"):  # also refuses NaN
            raise FlashVLError(f"--interval must be 0 or more seconds (finite), got {self.interval}")
        if self.min_change is not None and not 0 < self.min_change <= 1:
            raise FlashVLError(f"--min-change must be in (0, 1] (the mean thumbnail difference, see "
                               f"runtime/video/change.py; try 0.02), got {self.min_change}")


@dataclass(frozen=True)
class CaptionPiece:
    """Text of caption `id` as it is decoded (pieces=True)."""

    id: int
    frame: int
    text: str
    stream: str = ""  # the source's name (runtime.video.names)


@dataclass(frozen=True)
class CaptionEvent:
    """One caption, or (repeat=True) an unchanged scene re-reported with the last caption's id."""

    id: int
    repeat: bool
    frame: int  # Frame.index: position in the file, or frames since the start for live sources
    capture_ts: float  # time.time() when the frame was captured
    media_s: float | None  # files: the frame's time in the media (cumulative over loops)
    caption: str
    tokens: int
    finish_reason: str  # "stop" | "length" ("repeat" for repeats)
    preprocess_ms: float
    vision_ms: float
    prefill_ms: float
    decode_ms: float
    latency_ms: float  # capture of the frame -> its last token (repeats: -> the decision)
    dropped: int  # frames the source delivered since the previous event that were not captioned
    change: float | None  # scene_change() against the last captioned frame (None: gate off or first)
    stream: str = ""  # the source's name (runtime.video.names); ids count per stream

    def as_json(self) -> dict:
        r3 = (lambda x: None if x is None else round(x, 3))
        return {"v": JSONL_VERSION, "stream": self.stream, "id": self.id, "repeat": self.repeat, "frame": self.frame,
                "capture_ts": round(self.capture_ts, 6), "media_s": r3(self.media_s), "caption": self.caption,
                "tokens": self.tokens, "finish_reason": self.finish_reason,
                "preprocess_ms": r3(self.preprocess_ms), "vision_ms": r3(self.vision_ms),
                "prefill_ms": r3(self.prefill_ms), "decode_ms": r3(self.decode_ms),
                "latency_ms": r3(self.latency_ms), "dropped": self.dropped,
                "change": None if self.change is None else round(self.change, 5)}


@dataclass
class StreamStats:
    frames: int  # delivered by the source
    captions: int
    repeats: int
    dropped: int  # delivered but never captioned nor re-reported (once ended: every frame after the last event too)
    captions_per_s: float | None  # between the first and the last caption
    latency_ms_p50: float | None  # capture -> last token, over the last 10,000 captions
    latency_ms_p90: float | None
    source: SourceStats = field(default_factory=SourceStats)


@dataclass
class _Job:
    frame: Frame
    prepared: object = None
    encoded: object = None
    repeat: bool = False
    change: float | None = None
    prep_s: float = 0.0  # wall time of prepare (+ encode) for the grab schedule


def grab_delay(est_describe_s: float | None, est_prepare_s: float | None) -> float:
    """Seconds after caption N starts to grab frame N+1, so its preparation ends as caption N does.

    10% slack on the preparation estimate: a frame ready a little early costs a little freshness,
    one ready late idles the model."""
    if est_describe_s is None or est_prepare_s is None:
        return 0.0
    return max(0.0, est_describe_s - 1.1 * est_prepare_s)


def _ema(old: float | None, new: float, a: float = 0.3) -> float:
    return new if old is None else (1 - a) * old + a * new


def _rate(captions: int, t_first: float | None, t_last: float | None) -> float | None:
    """Captions per second between the first and the last caption."""
    if captions < 2 or t_last <= t_first:
        return None
    return (captions - 1) / (t_last - t_first)


def _p50_p90(latencies) -> tuple[float | None, float | None]:
    lat = sorted(latencies)
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None)
    return pct(0.5), pct(0.9)


def total_stats(streams: list[CaptionStream]) -> StreamStats:
    """Several streams' stats as one: counts summed, captions/s over all their captions, latency over all."""
    each = [s.stats() for s in streams]
    firsts = [s._t_first for s in streams if s._t_first is not None]
    lasts = [s._t_last for s in streams if s._t_last is not None]
    captions = sum(st.captions for st in each)
    source = SourceStats(**{k: sum(getattr(st.source, k) for st in each)
                            for k in ("frames", "corrupt", "missing", "outages", "outage_s", "loops")},
                         notes=[n for st in each for n in st.source.notes])
    return StreamStats(sum(st.frames for st in each), captions, sum(st.repeats for st in each),
                       sum(st.dropped for st in each), _rate(captions, min(firsts, default=None),
                                                             max(lasts, default=None)),
                       *_p50_p90([x for s in streams for x in s._latencies]), source)


class CaptionStream:
    """One source's caption loop.  `out`: a queue shared with other streams (runtime.video.streams reads
    it; this stream's own get() is then not used)."""

    def __init__(self, model, slot: FrameSlot, cadence: Cadence, *, capture: Capture | None = None,
                 source_stats: SourceStats | None = None, pieces: bool = False, queue_events: int = 256,
                 stop: threading.Event | None = None, name: str = "", out: queue.Queue | None = None):
        self.model, self.slot, self.cadence, self.pieces, self.name = model, slot, cadence, pieces, name
        self.capture = capture
        self.source_stats = source_stats or SourceStats()
        self.stop_event = stop or (capture.stop if capture else threading.Event())
        self.realtime = not slot.lossless  # lossless sources: no frame goes stale, grab at once
        self._out: queue.Queue = out if out is not None else queue.Queue(maxsize=queue_events)
        self.error: BaseException | None = None
        self._done = False  # the consumer has read everything
        self._lock = threading.Lock()  # orders stop()'s cancel() before the model thread's resume()
        self._ended = False  # the model thread has finished (and waited for its worker)
        self._cancel_sent = False
        # cadence state: used by one thread at a time (the worker, or the model thread when none runs);
        # _last_caption_s is written by the model thread while the worker may read it: either value is fine
        self._due = float("-inf")
        self._ref = None  # thumbnail of the last captioned frame
        self._last_caption_s = 0.0
        self._est_prepare: float | None = None
        self._est_describe: float | None = None
        # emission state: model thread only
        self._next_id = 1
        self._last_seq = -1
        self._last_event: CaptionEvent | None = None
        self._captions = self._repeats = self._dropped = 0
        self._latencies: deque[float] = deque(maxlen=10_000)
        self._t_first = self._t_last = None
        overlap = model.overlaps_by_default if cadence.overlap is None else cadence.overlap
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="flashvl-prepare") if overlap else None
        self._thread = threading.Thread(target=self._run, name="flashvl-model", daemon=True)
        if capture is not None:
            capture.start()
        self._thread.start()

    # ------------------------------------------------------------------ consumer side

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get(None)
        if item is None:
            raise StopIteration
        return item

    def get(self, timeout: float | None = None):
        """The next event or piece; None if none came within `timeout` seconds (None: until one comes
        or the stream is done, see `done`).  Raises what the loop raised (a source or model error)
        once the events before it are read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done:
            wait = _POLL_S if deadline is None else max(0.0, min(_POLL_S, deadline - time.monotonic()))
            try:
                return self._out.get(timeout=wait)
            except queue.Empty:
                pass
            if self._ended and self._out.empty():
                self._done = True
                if self.error is not None:
                    raise self.error
            elif deadline is not None and time.monotonic() >= deadline:
                return None
        return None

    @property
    def done(self) -> bool:
        return self._done

    @property
    def ended(self) -> bool:
        """The model thread has finished: every event of this stream is queued."""
        return self._ended

    def stop(self, timeout: float = 1.0) -> None:
        """End the loop: cancel this stream's caption in flight (it leaves the engine at its next step; an
        image already in the vision graph finishes first, seconds at full size on a CPU), drop the frame being
        captioned, leave every event already emitted readable with get().  The model thread hands the
        model back (resume()) as it ends, so the FlashVL object serves requests again."""
        self.request_stop()
        self.join_model(timeout)
        self.join_capture(timeout)

    def request_stop(self) -> None:
        """stop() without the waiting: several streams are all told first, then waited for together."""
        self.stop_event.set()
        with self._lock:
            if not self._ended and not self._cancel_sent:
                self._cancel_sent = True
                self.model.cancel()
        self.slot.close()

    def join_model(self, timeout: float) -> None:
        self._thread.join(timeout)

    def join_capture(self, timeout: float) -> None:
        if self.capture is not None and self.capture.thread.is_alive():
            # A file's read ends in milliseconds and the capture releases its source on its own thread; waiting
            # for that keeps the process from exiting with OpenCV mid-read (an abort in its teardown).  A
            # camera blocked for longer is left to its daemon thread, as before.
            self.capture.thread.join(timeout)

    def __enter__(self) -> CaptionStream:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> StreamStats:
        frames = self.source_stats.frames
        dropped = max(self._dropped, frames - self._captions - self._repeats) if self._ended else self._dropped
        return StreamStats(frames, self._captions, self._repeats, dropped,
                           _rate(self._captions, self._t_first, self._t_last), *_p50_p90(self._latencies),
                           self.source_stats)

    # ------------------------------------------------------------------ model thread

    def _run(self) -> None:
        entered = False
        try:
            self.model.enter_thread()
            entered = True
            self._loop()
        except Cancelled:
            pass  # stop() interrupted a graph call
        except BaseException as e:
            if not self.stop_event.is_set():
                self.error = e
        finally:
            self.stop_event.set()  # an error ends capture too (a camera must not stay open behind it)
            self.slot.close()
            if self._pool is not None:  # no prepare or encode of ours may outlive this thread
                self._pool.shutdown(wait=True, cancel_futures=True)
            if self.capture is not None and self.capture.error is not None and self.error is None:
                self.error = self.capture.error
            if entered:
                self.model.leave_thread()
            with self._lock:
                self._ended = True
                if self._cancel_sent:
                    self.model.resume()  # the model is the caller's again: no call of ours is in flight

    def _loop(self) -> None:
        job = self._next_job(0.0, in_worker=False)
        while job is not None and not self.stop_event.is_set():
            if job.repeat:
                self._emit_repeat(job)
                job = self._next_job(0.0, in_worker=False)
                continue
            if job.encoded is None:
                t0 = time.perf_counter()
                job.encoded = self.model.encode(job.prepared)
                job.prep_s += time.perf_counter() - t0
            self._est_prepare = _ema(self._est_prepare, job.prep_s)
            pending: Future | None = None
            if self._pool is not None and (self._est_describe is not None or not self.realtime):
                # (a live first caption runs alone: with no estimate, an early grab would be a stale frame)
                delay = grab_delay(self._est_describe, self._est_prepare) if self.realtime else 0.0
                pending = self._pool.submit(self._next_job, delay, True)
            t0 = time.perf_counter()
            self._describe(job)
            self._last_caption_s = time.perf_counter() - t0
            self._est_describe = _ema(self._est_describe, self._last_caption_s)
            job = pending.result() if pending is not None else self._next_job(0.0, in_worker=False)

    def _next_job(self, delay: float, in_worker: bool) -> _Job | None:
        """Wait `delay`, then the newest frame that is due; gate it; prepare it (and encode it when this
        runs beside a caption only if the backend allows). None when the source has ended or on stop."""
        if delay > 0 and self.stop_event.wait(delay):
            return None
        c = self.cadence
        while not self.stop_event.is_set():
            frame = self.slot.take(_POLL_S)
            if frame is None:
                if self.slot.ended:
                    return None
                continue
            if frame.clock < self._due - 1e-6:  # (the slack absorbs float rounding of index / fps)
                continue  # too soon after the last captioned frame: dropped
            change, thumb = None, None
            if c.min_change is not None:
                thumb = thumbnail(frame.image)
                if self._ref is not None:
                    change = scene_change(self._ref, thumb)
                    if change < c.min_change:
                        self._due = frame.clock + max(c.interval, self._last_caption_s)
                        return _Job(frame, repeat=True, change=change)
            self._ref, self._due = thumb, frame.clock + c.interval
            t0 = time.perf_counter()
            job = _Job(frame, prepared=self.model.prepare(frame.image), change=change)
            if self.stop_event.is_set():
                return None
            if not in_worker or self.model.encodes_concurrently:
                job.encoded = self.model.encode(job.prepared)
            job.prep_s = time.perf_counter() - t0
            return job
        return None

    def _describe(self, job: _Job) -> None:
        cid, f = self._next_id, job.frame
        self._next_id += 1
        gen = self.model.describe(job.encoded)
        for piece in gen:
            if self.stop_event.is_set():
                return
            if self.pieces:
                self._emit(CaptionPiece(cid, f.index, piece, self.name))
        t_end = time.perf_counter()
        r, enc = gen.result, job.encoded
        ev = CaptionEvent(cid, False, f.index, f.wall_ts, f.media_s, r.text, len(r.token_ids), r.finish_reason,
                          enc.preprocess_ms, enc.vision_ms, r.timings.prefill_ms, r.timings.decode_ms,
                          (t_end - f.t_capture) * 1e3, self._take_dropped(f), job.change, self.name)
        self._captions += 1
        self._latencies.append(ev.latency_ms)
        self._t_first = t_end if self._t_first is None else self._t_first
        self._t_last = t_end
        self._last_event = ev
        self._emit(ev)

    def _emit_repeat(self, job: _Job) -> None:
        last, f = self._last_event, job.frame
        assert last is not None, "the first due frame is always captioned"
        ev = CaptionEvent(last.id, True, f.index, f.wall_ts, f.media_s, last.caption, last.tokens, "repeat",
                          0.0, 0.0, 0.0, 0.0, (time.perf_counter() - f.t_capture) * 1e3, self._take_dropped(f),
                          job.change, self.name)
        self._repeats += 1
        self._emit(ev)

    def _take_dropped(self, f: Frame) -> int:
        dropped = f.seq - self._last_seq - 1
        self._last_seq = f.seq
        self._dropped += dropped
        return dropped

    def _emit(self, item) -> None:
        """Queue for the consumer; waits while the consumer lags (frames are dropped upstream meanwhile),
        gives up once stopped (the consumer is not reading any more)."""
        while True:
            try:
                self._out.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                if self.stop_event.is_set():
                    return


# ----------------------------------------------------------------------------- opening


def open_stream(model, source, cadence: Cadence, *, realtime: bool = True, pieces: bool = False,
                on_frame=None, name: str | None = None) -> CaptionStream:
    """Start capturing and captioning.

    source: a VideoSource (opened here: a mistake raises SourceError before any thread starts), a
    FrameReader already opened (its own `realtime`), a FrameFeed, or an iterable of BGR arrays /
    (array, seconds) pairs.  realtime=False (files and iterables): every frame is offered in order and
    none is dropped for being late; `interval` then runs on media time.  on_frame(frame) runs on the
    capture thread for every frame (--save, --show).  name: the stream's name in its events (default
    KIND0, e.g. video0, camera0, feed0, frames0).
    """
    name = f"{source_kind(source)}0" if name is None else name
    inp = open_input(source, realtime=realtime, on_frame=on_frame, name=name)
    return start_stream(model, inp, cadence, pieces=pieces, name=name)


def start_stream(model, inp: Input, cadence: Cadence, *, pieces: bool = False, name: str = "",
                 out: queue.Queue | None = None) -> CaptionStream:
    return CaptionStream(model, inp.slot, cadence, capture=inp.capture, source_stats=inp.stats, pieces=pieces,
                         stop=inp.stop, name=name, out=out)
