"""Open a camera, video file, URL or GStreamer pipeline with OpenCV and read it as a stream of Frames.

    check_opencv_backend(source, build_info=None)  SourceError if this OpenCV lacks the videoio backend needed
    open_capture(source) -> cv2.VideoCapture       opened, or SourceError (one line: source, what failed, fix)
    Backoff()                                      reconnect delays 0.5, 1, 2, 4, 8, 8, ... s; reset() after a success
    FrameReader(source, realtime=True, stop=None, opener=open_capture, backoff=None)
        .open()     first open; SourceError (a source that does not open at start was mistyped, not an outage)
        .frames()   -> Iterator[Frame], image BGR uint8 [H, W, 3]; ends at a file's end or when `stop` is set
        .stats      SourceStats: fps, frames, corrupt, missing, outages, outage_s, loops, notes
        .close()    release the capture (idempotent; frames() releases it when it ends)

Files with `realtime` are paced like a camera: the frame at media time m is not handed out before t0 + m, and
its t_capture is that moment.  Live sources are never paced.  With `source.loop` a file is reopened at its end
and media time keeps counting.  OpenCV returns a new array per read, so frames never share memory.

What is counted (experiments with OpenCV 5.0 / FFmpeg on damaged mp4v .mp4, MJPEG and XVID .avi, .mkv):
  corrupt  a position that did not decode or came out malformed (None, empty, not uint8, not 1/3/4 channels;
           gray and BGRA are converted).  When read() fails before the container's frame count we read on
           (OpenCV 5 drops one damaged packet per failed read; an mp4 recovers at its next keyframe), then seek
           forward one position at a time.  FFmpeg also drops undecodable packets silently (MJPEG .avi, .mkv):
           the file just ends early.  Seeking back to the last frame delivered tells that end from a truncation
           (a different picture there: positions had shifted); the shortfall counts as corrupt only where the
           container stores its frame count (AVI, MP4/MOV, sniffed from the first bytes).  Elsewhere (.mkv,
           .webm, .ts) OpenCV's count is duration x fps, an estimate, so a shortfall is only a note.  Frames
           after a silent drop are numbered as they come (as POS_FRAMES is): index and media_s run early.
  missing  positions at the end that neither reads nor seeks reach (a truncated file), with a note; finding
           them costs one seek per position (about 0.2 ms for .avi), and `stop` is honoured meanwhile.
  outage   a live source whose read() fails: release, then reopen with backoff until it delivers a frame.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from runtime.video.frame import Frame, SourceError, SourceStats, VideoSource

log = logging.getLogger(__name__)

URL_TIMEOUT_MS = 5000  # open and read timeouts for --url, so a dead stream is noticed within seconds
GST_TAIL = "! videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1"
JETSON_FIX = ("on Jetson use JetPack's system OpenCV (apt install python3-opencv, a venv made with "
              "--system-site-packages, pip uninstall opencv-python-headless; see requirements-jetson.txt)")
_FAILED = object()  # what _read returns when read() fails (None is a malformed frame)
_SAMPLE = 8  # every 8th pixel each way identifies a frame when we check that seeking lands where we think

# ----------------------------------------------------------------------------- backends


def _video_io(build_info: str) -> dict[str, str] | None:
    """The 'Video I/O' section of cv2.getBuildInformation() as {name lowercased: value}; None if absent."""
    lines = build_info.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "Video I/O:":
            indent, out = len(line) - len(line.lstrip()), {}
            for sub in lines[i + 1:]:
                if sub.strip() and len(sub) - len(sub.lstrip()) <= indent:
                    break
                name, sep, value = sub.strip().partition(":")
                if sep:
                    out[name.strip().lower()] = value.strip()
            return out
    return None


def _has(backends: dict[str, str], *names: str) -> bool:
    # values read "YES (1.20.3)", "YES (prebuilt binaries)", "plugin" or "NO": anything but NO is there
    return any(not backends.get(n, "NO").upper().startswith("NO") for n in names)


def check_opencv_backend(source: VideoSource, build_info: str | None = None) -> None:
    """Raise SourceError if this OpenCV lacks the videoio backend `source` needs (see the module docstring)."""
    backends = _video_io(cv2.getBuildInformation() if build_info is None else build_info)
    if backends is None:  # a build that does not list its backends: the open itself will say what fails
        return
    this = f"this OpenCV {cv2.__version__} (cv2 from {getattr(cv2, '__file__', '?')})"
    if source.kind == "gst" and not _has(backends, "gstreamer"):
        raise SourceError(
            f"{source.describe()}: {this} is built without GStreamer (pip's opencv-python and "
            f"opencv-python-headless wheels are); {JETSON_FIX}, elsewhere an OpenCV built with "
            f"-DWITH_GSTREAMER=ON, or use --url/--video, which go through FFmpeg")
    if source.kind in ("url", "file") and not _has(backends, "ffmpeg", "gstreamer"):
        raise SourceError(
            f"{source.describe()}: {this} has neither FFmpeg nor GStreamer to read a {source.kind}; "
            f"pip install opencv-python-headless (built with FFmpeg), or {JETSON_FIX}")
    if source.kind == "camera" and sys.platform.startswith("linux") and not _has(backends, "v4l/v4l2", "v4l"):
        raise SourceError(
            f"{source.describe()}: {this} is built without V4L2, which Linux cameras need; pip install "
            f"opencv-python-headless (built with V4L2), {JETSON_FIX}, or build OpenCV with -DWITH_V4L=ON")


def open_capture(source: VideoSource) -> cv2.VideoCapture:
    """Open `source` with the backend it needs, or raise SourceError naming it, what failed and the fix."""
    check_opencv_backend(source)
    ffmpeg = _has(_video_io(cv2.getBuildInformation()) or {"ffmpeg": "YES"}, "ffmpeg")
    what = source.describe()
    if source.kind == "camera":
        linux, dev = sys.platform.startswith("linux"), f"/dev/video{source.target}"
        if linux and not os.path.exists(dev):
            raise SourceError(f"{what}: no {dev} (no such device); list cameras with `v4l2-ctl --list-devices` "
                              f"and pass the N of /dev/videoN, e.g. --camera 0")
        cap = cv2.VideoCapture(source.target, cv2.CAP_V4L2 if linux else cv2.CAP_ANY)
        if not cap.isOpened():
            raise SourceError(
                f"{what}: {dev} exists but does not open as a camera (in use by another program, no permission: "
                f"add the user to the 'video' group, or not a capture node); check `v4l2-ctl --list-devices`"
                if linux else f"{what}: camera {source.target} does not open; check it is connected and not in use")
        return cap
    if source.kind == "file":
        path = Path(source.target)
        if not path.exists():
            raise SourceError(f"{what}: no such file (looked for {path.resolve()}); check the path")
        if not path.is_file():
            kind = "a directory" if path.is_dir() else "not a regular file"
            raise SourceError(f"{what}: is {kind}, expected a video file; give the path of a file such as clip.mp4")
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG if ffmpeg else cv2.CAP_ANY)
        if not cap.isOpened():
            raise SourceError(
                f"{what}: cannot be decoded ({path.stat().st_size} bytes); the file may be truncated or not a "
                f"video OpenCV can decode; check that it plays (ffprobe, VLC) or re-encode it: "
                f"ffmpeg -i IN -c:v libx264 OUT.mp4")
        return cap
    if source.kind == "url":
        if ffmpeg:
            cap = cv2.VideoCapture(source.target, cv2.CAP_FFMPEG, [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, URL_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, URL_TIMEOUT_MS])
        else:  # GStreamer opens URIs with uridecodebin; it takes no timeout parameters
            cap = cv2.VideoCapture(source.target, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            raise SourceError(
                f"{what}: cannot open the stream (refused, no answer within {URL_TIMEOUT_MS / 1000:g} s, or not "
                f"a video FFmpeg can read); check it plays with `ffplay URL` or VLC, for RTSP cameras the "
                f"user:password and path")
        return cap
    if "appsink" not in source.target:
        raise SourceError(f"{what}: the pipeline has no appsink for OpenCV to take frames from; "
                          f"end it with `{GST_TAIL}`")
    cap = cv2.VideoCapture(source.target, cv2.CAP_GSTREAMER)
    if not cap.isOpened():
        raise SourceError(f"{what}: GStreamer could not start the pipeline; run it with gst-launch-1.0 (appsink "
                          f"replaced by fakesink) to see which element fails")
    return cap


# ----------------------------------------------------------------------------- reading


@dataclass
class Backoff:
    """Reconnect delays: `initial_s`, doubling up to `max_s`; reset() after a success."""

    initial_s: float = 0.5
    max_s: float = 8.0
    _next_s: float = field(init=False, repr=False)

    def __post_init__(self):
        if not 0 < self.initial_s <= self.max_s:
            raise SourceError(f"Backoff: expected 0 < initial_s <= max_s, got {self.initial_s} and {self.max_s}")
        self._next_s = self.initial_s

    def next(self) -> float:
        delay, self._next_s = self._next_s, min(self._next_s * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._next_s = self.initial_s


def _read(cap):
    """cap.read() -> the raw image, or _FAILED (a cv2.error from a broken stream is a failed read too)."""
    try:
        ok, img = cap.read()
    except cv2.error:
        return _FAILED
    return img if ok else _FAILED


def _as_bgr(img) -> np.ndarray | None:
    """OpenCV's frame -> BGR uint8 [H, W, 3], C-contiguous; None when it is not a picture (counted corrupt)."""
    if not isinstance(img, np.ndarray) or img.size == 0 or img.dtype != np.uint8 or img.ndim not in (2, 3):
        return None
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)  # [H, W(, 1)] -> [H, W, 3]
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)  # [H, W, 4] -> [H, W, 3]
    return np.ascontiguousarray(img) if channels == 3 else None


def _stores_count(path: str) -> bool:
    """The container keeps an exact frame count (AVI header, MP4/MOV sample tables): sniffed, not by name."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return (head[:4] == b"RIFF" and head[8:12] == b"AVI ") or head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide")


class FrameReader:
    """Reads one VideoSource as Frames; the corrupt / missing / outage rules are in the module docstring.
    frames() runs on one thread; stop it from another with `stop.set()`, not close()."""

    def __init__(self, source: VideoSource, *, realtime: bool = True, stop: threading.Event | None = None,
                 opener: Callable[[VideoSource], object] = open_capture, backoff: Backoff | None = None):
        self.source, self.realtime = source, realtime
        self.stop = stop if stop is not None else threading.Event()
        self.stats = SourceStats()
        self._opener, self._backoff = opener, backoff if backoff is not None else Backoff()
        self._cap = None
        self._count = 0  # files: the frames the container claims (0 when unknown)
        self._exact = False  # files: the container stores that count rather than OpenCV estimating it
        self._name = Path(source.target).name if source.kind == "file" else source.describe()

    def open(self) -> None:
        if self._cap is not None:
            return
        self._cap = self._connect()
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.stats.fps = fps if math.isfinite(fps) and 0 < fps < 1000 else 0.0  # 1000, 90000: time bases, not rates
        if self.source.kind == "file":
            count = float(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            self._count = int(count) if math.isfinite(count) and count > 0 else 0
            self._exact = _stores_count(self.source.target)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def frames(self) -> Iterator[Frame]:
        self.open()
        try:
            yield from (self._live() if self.source.live else self._file())
        finally:
            self.close()

    def _connect(self):
        cap = self._opener(self.source)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.source.describe()}: the capture did not open; check the source")
        return cap

    def _frame(self, image: np.ndarray, index: int | None, media_s: float | None) -> Frame:
        seq = self.stats.frames
        self.stats.frames += 1
        return Frame(image, seq, seq if index is None else index, time.perf_counter(), time.time(), media_s)

    def _note(self, text: str) -> None:
        if text not in self.stats.notes:  # a looping file says the same thing every pass
            self.stats.notes.append(text)
            log.warning(text)

    # --- files

    def _file(self) -> Iterator[Frame]:
        st, fps = self.stats, self.stats.fps
        offset, t0 = 0.0, None  # media seconds of the passes before this one; perf_counter() at media time 0
        while True:
            pos, good, mark, last_m = 0, 0, None, offset  # next position; frames yielded; (index, sample) of the last
            corrupt0, missing0 = st.corrupt, st.missing
            while not self.stop.is_set():
                img = _read(self._cap)
                if img is _FAILED:
                    got = self._recover(pos, mark) if pos < self._count else None
                    if got is None:
                        break
                    pos, img = got
                m = offset + (pos / fps if fps else self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000)
                index, pos = pos, pos + 1
                bgr = _as_bgr(img)
                if bgr is None:
                    st.corrupt += 1
                    continue
                if self.realtime:
                    t0 = time.perf_counter() - m if t0 is None else t0
                    wait = t0 + m - time.perf_counter()
                    if wait > 0 and self.stop.wait(wait):
                        return
                mark, good, last_m = (index, bgr[::_SAMPLE, ::_SAMPLE].copy()), good + 1, m
                yield self._frame(bgr, index, m)
            if self.stop.is_set():
                return
            self._end_pass(pos, corrupt0, missing0)
            if not self.source.loop:
                return
            if good == 0:
                self._note(f"{self._name}: no frame decoded in a whole pass; not looping")
                return
            step = 1 / fps if fps else max((last_m - offset) / max(mark[0], 1), 1e-3)  # no fps: mean frame gap
            offset = last_m + step
            self.close()
            try:
                self._cap = self._connect()
            except SourceError as e:
                self._note(f"{self._name}: could not reopen for the next loop ({e})")
                return
            st.loops += 1

    def _recover(self, pos: int, mark: tuple[int, np.ndarray] | None) -> tuple[int, object] | None:
        """read() failed at position `pos` < the frame count: (position, raw image) of the next frame that
        decodes, or None at the real end of the file, counting corrupt and missing positions on the way."""
        st, count = self.stats, self._count
        for k in range(1, count - pos):  # plain reads first: each failed one drops one damaged packet
            if self.stop.is_set():
                return None
            img = _read(self._cap)
            if img is not _FAILED:
                st.corrupt += k
                return pos + k, img
        if not self._exact or (mark is not None and not self._shows(*mark)):
            return None  # an estimated count, or frames were dropped silently and this is the real end
        for q in range(pos, count):
            if self.stop.is_set():
                return None
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, q)
            img = _read(self._cap)
            if img is not _FAILED:
                st.corrupt += q - pos
                return q, img
        st.missing += count - pos
        self._note(f"{self._name}: ended at frame {pos} of {count} (truncated?)")
        return None

    def _shows(self, index: int, sample: np.ndarray) -> bool:
        """Seek to `index`: does it decode to the picture we delivered there (do our positions match the file's)?"""
        self._cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        img = _read(self._cap)
        bgr = None if img is _FAILED else _as_bgr(img)
        return bgr is not None and np.array_equal(bgr[::_SAMPLE, ::_SAMPLE], sample)

    def _end_pass(self, pos: int, corrupt0: int, missing0: int) -> None:
        st, count = self.stats, self._count
        short = count - pos - (st.missing - missing0)  # positions no read reached: dropped silently by the decoder
        if short > 0 and self._exact:
            st.corrupt += short
        elif short >= max(2, count // 20):  # an estimated count is only worth a note when clearly off
            self._note(f"{self._name}: ended after {pos} frames of about {count} (this container's count is "
                       f"duration x fps: damaged, truncated or a variable frame rate)")
        if st.corrupt > corrupt0:
            self._note(f"{self._name}: {st.corrupt - corrupt0} of {count or pos} frames could not be decoded "
                       f"and were skipped")

    # --- live sources

    def _live(self) -> Iterator[Frame]:
        while not self.stop.is_set():
            img = _read(self._cap)
            if img is _FAILED:
                img = self._reconnect()
                if img is _FAILED:
                    return
            bgr = _as_bgr(img)
            if bgr is None:
                self.stats.corrupt += 1
                continue
            yield self._frame(bgr, None, None)

    def _reconnect(self):
        """The live source stopped: reopen with backoff until it delivers a frame (returned), or _FAILED on stop."""
        what, lost, attempts = self.source.describe(), time.perf_counter(), 0
        self.close()
        delay = self._backoff.next()
        log.warning("%s: no frames after %d frames; reopening (attempt 1 in %.1f s)", what, self.stats.frames, delay)
        while not self.stop.wait(delay):
            attempts += 1
            try:
                cap = self._connect()
            except (SourceError, cv2.error) as e:
                cap, why = None, str(e)
            else:
                img, why = _read(cap), "opened but delivered no frame"
                if img is not _FAILED:
                    self._cap, down = cap, time.perf_counter() - lost
                    log.warning("%s: back after %.1f s, %d attempts", what, down, attempts)
                    self.stats.outages += 1
                    self.stats.outage_s += down
                    self._backoff.reset()
                    return img
                cap.release()
            delay = self._backoff.next()
            log.debug("%s: attempt %d failed (%s); next in %.1f s", what, attempts, why, delay)
        return _FAILED
