"""Frames in: the slot between the capture thread and the model, and the sources that fill it.

    FrameSlot(lossless)     one frame; live: the newest replaces an untaken one (it is dropped), so the
                            model always sees the present; lossless: put() waits until the frame is taken
    Capture(frames, slot)   a daemon thread: for each Frame from `frames` (a FrameReader, an app's
                            iterable), stamp it with the stream's name, call the on_frame hook (the --save
                            writer), then put it in the slot; on_end (releasing the capture) runs on that
                            thread when the frames end
    FrameFeed               for apps with their own camera stack: push(image) from any thread, never blocks
    array_frames(iterable)  NumPy frames (or (frame, seconds) pairs) -> Frames
    as_bgr(image, where)    any frame an app gives -> BGR uint8 [H, W, 3], or FlashVLError naming the problem
    open_input(source)      any source captions() takes -> Input: opened, wired to a slot, no thread started

Nothing queues behind the slot: a model that is slower than the camera sees the newest frame,
and the frames in between are counted (Frame.seq gaps), not stored.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator

import numpy as np

from runtime.errors import FlashVLError
from runtime.video.frame import Frame, SourceStats, VideoSource


class FrameSlot:
    def __init__(self, lossless: bool = False):
        self.lossless = lossless
        self._frame: Frame | None = None
        self._closed = False
        self._cv = threading.Condition()

    def put(self, frame: Frame, stop: threading.Event | None = None) -> None:
        with self._cv:
            while self.lossless and self._frame is not None and not self._closed and not (stop and stop.is_set()):
                self._cv.wait(0.1)
            if self._closed:
                return
            self._frame = frame  # live: an untaken frame is replaced (dropped)
            self._cv.notify_all()

    def take(self, timeout: float) -> Frame | None:
        """The newest frame, or None after `timeout` seconds without one (see `ended`)."""
        with self._cv:
            if self._frame is None and not self._closed:
                self._cv.wait(timeout)
            frame, self._frame = self._frame, None
            self._cv.notify_all()
            return frame

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    @property
    def ended(self) -> bool:
        """Closed and nothing left to take."""
        with self._cv:
            return self._closed and self._frame is None


class Capture:
    """Runs `frames` on a daemon thread (a camera read can block for seconds; it must not hold up exit)."""

    def __init__(self, frames: Iterator[Frame], slot: FrameSlot, stop: threading.Event,
                 on_frame: Callable[[Frame], None] | None = None, on_end: Callable[[], None] | None = None,
                 name: str = ""):
        self.frames, self.slot, self.stop, self.on_frame, self.on_end = frames, slot, stop, on_frame, on_end
        self.name = name
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="flashvl-capture", daemon=True)

    def start(self) -> Capture:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            for frame in self.frames:
                if self.stop.is_set():
                    break
                if self.name:
                    frame = replace(frame, stream=self.name)  # the image is shared, not copied
                if self.on_frame is not None:
                    self.on_frame(frame)
                self.slot.put(frame, self.stop)
        except BaseException as e:  # surfaced to the caption iterator, not lost on a daemon thread
            self.error = e
        finally:
            self.slot.close()
            if self.on_end is not None:
                self.on_end()  # on this thread: a capture must not be released while another thread reads it


# ----------------------------------------------------------------------------- app frames


def as_bgr(image, where: str) -> np.ndarray:
    """An app's frame -> a new C-contiguous BGR uint8 [H, W, 3] (gray and BGRA are converted)."""
    import cv2

    if not isinstance(image, np.ndarray):
        raise FlashVLError(f"{where}: expected a NumPy array (H x W x 3 BGR uint8), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise FlashVLError(f"{where}: expected uint8 pixels, got {image.dtype} {list(image.shape)}; convert with "
                           f"np.clip(x * 255, 0, 255).astype(np.uint8) for [0, 1] floats")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)  # [H, W] -> [H, W, 3]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)  # [H, W, 4] -> [H, W, 3]
    elif image.ndim != 3 or image.shape[2] != 3:
        raise FlashVLError(f"{where}: expected an H x W x 3 BGR frame, got shape {list(image.shape)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise FlashVLError(f"{where}: the frame is empty, shape {list(image.shape)}")
    return np.array(image, order="C", copy=True)  # owned: the app may reuse its buffer


def array_frames(frames: Iterable, stop: threading.Event, stats: SourceStats) -> Iterator[Frame]:
    """An app's iterable of BGR arrays, or (array, seconds) pairs whose seconds drive --interval;
    counts each delivered frame in `stats`, as FrameReader and FrameFeed do."""
    for seq, item in enumerate(frames):
        if stop.is_set():
            return
        media_s = None
        if isinstance(item, tuple):
            if len(item) != 2:
                raise FlashVLError(f"frame {seq}: expected an array or an (array, seconds) pair, got a "
                                   f"{len(item)}-tuple")
            item, media_s = item[0], float(item[1])
        image = as_bgr(item, f"frame {seq}")
        stats.frames += 1
        yield Frame(image, seq, seq, time.perf_counter(), time.time(), media_s)


class FrameFeed:
    """Push frames your app already has; the caption loop (FlashVL.captions(feed)) takes the newest.

        feed = FrameFeed()
        with vl.captions(feed) as events:       # events on another thread of yours, or poll events.get()
            feed.push(frame_bgr)                 # from the camera callback; never blocks, newest wins
        feed.close()                             # the events end after the last caption

    `lossless=True` makes push() wait until the loop has taken the previous frame instead (offline work).
    """

    def __init__(self, lossless: bool = False):
        self.slot = FrameSlot(lossless)
        self.stats = SourceStats()
        self.on_frame: Callable[[Frame], None] | None = None  # set by captions(on_frame=...), runs in push()
        self.name = ""  # the stream's name, set by captions()
        self._seq = 0
        self._lock = threading.Lock()

    def push(self, image: np.ndarray, timestamp: float | None = None) -> None:
        """image: BGR uint8 [H, W, 3] (copied); timestamp: seconds on your clock, used by `interval`."""
        frame_image = as_bgr(image, "FrameFeed.push")
        with self._lock:
            seq, self._seq = self._seq, self._seq + 1
            self.stats.frames += 1
        frame = Frame(frame_image, seq, seq, time.perf_counter(), time.time(),
                      None if timestamp is None else float(timestamp), self.name)
        if self.on_frame is not None:
            self.on_frame(frame)
        self.slot.put(frame)

    def close(self) -> None:
        self.slot.close()


# ----------------------------------------------------------------------------- opening


@dataclass
class Input:
    """A source opened and wired to a slot, its capture thread not started yet (open_input)."""

    slot: FrameSlot
    stats: SourceStats
    capture: Capture | None = None  # None for a FrameFeed: the app's push() fills the slot
    stop: threading.Event | None = None
    release: object = None  # a FrameReader to close if the stream never starts

    def discard(self) -> None:
        if self.release is not None:
            self.release.close()


def source_kind(source) -> str:
    """What a source is called in default stream names: camera, video, url, gst, feed or frames."""
    from runtime.video.sources import FrameReader  # (OpenCV's videoio: only when a source is opened)

    if isinstance(source, FrameReader):
        source = source.source
    if isinstance(source, VideoSource):
        return source.flag_name
    return "feed" if isinstance(source, FrameFeed) else "frames"


def open_input(source, *, realtime: bool = True, on_frame=None, name: str = "") -> Input:
    """Open `source` (see open_stream) and wire it to a slot; a mistake raises before any thread starts."""
    from runtime.video.sources import FrameReader  # (OpenCV's videoio: only when a source is opened)

    if isinstance(source, FrameFeed):
        if not realtime and not source.slot.lossless:
            raise FlashVLError("realtime=False with a FrameFeed: make the feed FrameFeed(lossless=True), whose "
                               "push() waits for the loop instead")
        source.on_frame, source.name = on_frame, name
        return Input(source.slot, source.stats)
    if isinstance(source, VideoSource):
        if source.live and not realtime:
            raise FlashVLError(f"{source.describe()} is a live source: frames come when they come, so realtime=False "
                               f"(--no-realtime) applies to files only")
        source = FrameReader(source, realtime=realtime)
        source.open()
    if isinstance(source, FrameReader):
        stop, realtime = source.stop, source.realtime
        frames, stats, on_end, release = source.frames(), source.stats, source.close, source
    elif isinstance(source, (str, bytes)) or not hasattr(source, "__iter__"):
        raise FlashVLError(f"captions(): expected a VideoSource, a FrameFeed or an iterable of frames, got "
                           f"{type(source).__name__}; for a file use VideoSource.file(path)")
    else:
        stop, stats, on_end, release = threading.Event(), SourceStats(), None, None
        frames = array_frames(source, stop, stats)
    slot = FrameSlot(lossless=not realtime)
    return Input(slot, stats, Capture(frames, slot, stop, on_frame, on_end, name), stop, release)
