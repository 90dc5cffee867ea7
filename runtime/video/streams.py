"""Several sources captioned at once through one model, read as one iterator of events.

    open_captions(vl, source, prompt, cadence, ...)  what FlashVL.captions() does: one source -> CaptionStream
                                                     (as ever); a dict {name: source} or a list of sources ->
                                                     CaptionStreams
    named_sources(source)       a dict or list of sources -> [(name, source)]; None for one source
    open_streams(entries, cadence, realtime, pieces) -> CaptionStreams
                                entries: [(name, model, source, on_frame)], a model object per stream, so
                                that stopping one stream cancels only its own call
    CaptionStreams              iterate it, or get(timeout), for every stream's events (and pieces), each
                                with .stream naming its source; .streams {name: CaptionStream} in order;
                                stop(); stats() {name: StreamStats}; total() StreamStats of all together

Every source is opened before any thread starts: one that does not open raises, naming its stream, and
the ones opened are closed again.  Each stream keeps its own capture thread, newest-frame slot and model
thread, so it has at most one caption in flight; the engine's scheduler batches the streams' requests into
its decoder steps and takes them first come, first served, which gives each stream a fair share.  A stream
whose source ends (a file) ends alone and the others go on; an error in one stops them all, and is raised,
naming the stream, once the events before it are read.
"""

from __future__ import annotations

import queue
import time

from runtime.arguments import check_bool
from runtime.errors import FlashVLError
from runtime.video.capture import FrameFeed, open_input, source_kind
from runtime.video.captioner import Cadence, CaptionStream, StreamStats, open_stream, start_stream, total_stats
from runtime.video.frame import VideoSource
from runtime.video.names import check_name, default_names

_POLL_S = 0.1  # how often a blocked get() looks at the streams
_SOURCES = (VideoSource, FrameFeed)  # what a list of several sources may hold (FrameReader: see named_sources)


def named_sources(source) -> list[tuple[str, object]] | None:
    """{name: source} as given, or a list/tuple of VideoSources, FrameReaders and FrameFeeds named by kind
    (video0, video1, camera0, feed0, ...); None for anything else (one source, or a list of frames)."""
    from runtime.video.sources import FrameReader

    kinds = (*_SOURCES, FrameReader)
    if isinstance(source, dict):
        if not source:
            raise FlashVLError("captions(): the dict of sources is empty; give {name: source}, e.g. "
                               "{'door': VideoSource.camera(0), 'yard': VideoSource.camera(1)}")
        for name in source:
            check_name(name, "captions()")
        return list(source.items())
    if not isinstance(source, (list, tuple)) or not any(isinstance(s, kinds) for s in source):
        return None  # one source, or an iterable of frames
    other = next((s for s in source if not isinstance(s, kinds)), None)
    if other is not None:
        raise FlashVLError(f"captions(): a list of several sources holds VideoSources and FrameFeeds, got a "
                           f"{type(other).__name__} among them; give iterables of frames as a dict "
                           f"{{name: frames}}")
    names = default_names([source_kind(s) for s in source], [None] * len(source))
    return list(zip(names, source))


def open_captions(vl, source, prompt, cadence: Cadence | None, *, realtime: bool = True, pieces: bool = False,
                  on_frame=None):
    """FlashVL.captions(): see its docstring; several sources share `prompt`, `cadence` and `realtime`, and
    on_frame(frame) gets every stream's frames, `frame.stream` naming the source."""
    from runtime.video.model import FlashVLModel, PromptConfig

    if isinstance(prompt, str):
        prompt = PromptConfig(prompt)
    if not isinstance(prompt, PromptConfig):
        raise FlashVLError(f"prompt must be a string or a runtime.video.PromptConfig, got {type(prompt).__name__}")
    if cadence is not None and not isinstance(cadence, Cadence):
        raise FlashVLError(f"cadence must be a runtime.video.Cadence or None, got {type(cadence).__name__}; e.g. "
                           f"Cadence(interval=2)")
    check_bool("realtime", realtime)
    check_bool("pieces", pieces)
    if on_frame is not None and not callable(on_frame):
        raise FlashVLError(f"on_frame must be a function of one frame or None, got {type(on_frame).__name__}")
    named = named_sources(source)
    if named is None:
        return open_stream(FlashVLModel(vl, prompt), source, cadence or Cadence(), realtime=realtime, pieces=pieces,
                           on_frame=on_frame)
    return open_streams([(name, FlashVLModel(vl, prompt), s, on_frame) for name, s in named], cadence or Cadence(),
                        realtime=realtime, pieces=pieces)


def named_error(e: BaseException, name: str) -> BaseException:
    """`e` saying which stream it came from: a FlashVLError's one line starts `stream NAME: `."""
    if isinstance(e, FlashVLError):
        try:
            named = type(e)(f"stream {name}: {e}")
        except TypeError:  # a subclass with another constructor
            named = FlashVLError(f"stream {name}: {e}")
        named.__cause__ = e
        return named
    e.add_note(f"(in stream {name})")
    return e


def open_streams(entries, cadence: Cadence, *, realtime: bool = True, pieces: bool = False,
                 queue_events: int = 256) -> CaptionStreams:
    """Open every source, then start a CaptionStream for each (see the module docstring)."""
    inputs = []
    try:
        for name, _, source, on_frame in entries:
            try:
                inputs.append(open_input(source, realtime=realtime, on_frame=on_frame, name=name))
            except FlashVLError as e:
                raise named_error(e, name) from None
    except BaseException:
        _discard(inputs)
        raise
    out: queue.Queue = queue.Queue(maxsize=queue_events * len(entries))
    streams: list[CaptionStream] = []
    try:
        for (name, model, _, _), inp in zip(entries, inputs):
            streams.append(start_stream(model, inp, cadence, pieces=pieces, name=name, out=out))
    except BaseException:
        for s in streams:
            s.stop()
        _discard(inputs[len(streams):])
        raise
    return CaptionStreams(streams, out)


def _discard(inputs) -> None:
    for inp in inputs:
        try:
            inp.discard()
        except Exception:
            pass  # the failure being raised is the one to report


class CaptionStreams:
    def __init__(self, streams: list[CaptionStream], out: queue.Queue):
        self.streams = {s.name: s for s in streams}
        self.error: BaseException | None = None
        self._out = out
        self._done = False

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get(None)
        if item is None:
            raise StopIteration
        return item

    def get(self, timeout: float | None = None):
        """The next event or piece of any stream; None if none came within `timeout` seconds (None: until one
        comes or every stream is done).  Raises a stream's error once the events before it are read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done:
            self._watch()
            wait = _POLL_S if deadline is None else max(0.0, min(_POLL_S, deadline - time.monotonic()))
            try:
                return self._out.get(timeout=wait)
            except queue.Empty:
                pass
            if all(s.ended for s in self.streams.values()) and self._out.empty():  # ended first: emits precede it
                self._done = True
                self._watch()
                if self.error is not None:
                    raise self.error
            elif deadline is not None and time.monotonic() >= deadline:
                return None
        return None

    def _watch(self) -> None:
        """The first stream that ended with an error stops the others."""
        if self.error is not None:
            return
        for name, s in self.streams.items():
            if s.ended and s.error is not None:
                self.error = named_error(s.error, name) if len(self.streams) > 1 else s.error
                for other in self.streams.values():
                    other.request_stop()
                return

    @property
    def done(self) -> bool:
        return self._done

    def stop(self, timeout: float = 1.0) -> None:
        """Stop every stream (each cancels its own caption in flight, as CaptionStream.stop does); the events
        already emitted stay readable with get()."""
        for s in self.streams.values():
            s.request_stop()
        for join in (CaptionStream.join_model, CaptionStream.join_capture):
            deadline = time.monotonic() + timeout
            for s in self.streams.values():
                join(s, max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> CaptionStreams:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> dict[str, StreamStats]:
        return {name: s.stats() for name, s in self.streams.items()}

    def total(self) -> StreamStats:
        """All streams as one: counts summed, captions/s over all captions, latency percentiles over all."""
        return total_stats(list(self.streams.values()))
