"""Where captions go besides the terminal: a JSON Lines file and a captioned copy of the video.

    JsonlWriter(target)        target: a path, or '-' for stdout
        .write(record: dict)   one JSON object per line, flushed at once (a killed run loses nothing)
        .close()               idempotent; never closes stdout
    VideoSaver(path, fps, lossless=False, queue_frames=64)
        .offer(image, caption, header=None)
                               BGR uint8 [H, W, 3], from the capture thread, every frame; returns at once
                               (a full queue drops the frame from the saved video, counted in .dropped),
                               or, with lossless=True, waits for room
        .close()               drain, finalise the file (an mp4 is unreadable without it), join;
                               raises FlashVLError if writing failed.  Idempotent.
        .discard()             for a run that failed before its first frame: stop, write nothing, say nothing
        .frames_written, .dropped

A writer thread draws the caption (runtime.video.overlay.draw_caption) and encodes, so a slow disk or
encoder never stalls capture.  Both classes check their target when constructed, so a wrong path is
reported before a long run starts, not at its end.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import queue
import re
import shutil
import stat
import sys
import tempfile
import threading
import time

import cv2
import numpy as np

from runtime.arguments import check_opencv_path
from runtime.errors import FlashVLError
from runtime.files import process_alive
from runtime.video.overlay import draw_caption

log = logging.getLogger(__name__)

# Extension -> FourCCs to try, in order.  MJPG in .avi is OpenCV's own encoder, present in every build,
# hence the fallback the errors suggest.
CODECS = {".mp4": ("mp4v",), ".m4v": ("mp4v",), ".mov": ("mp4v",), ".avi": ("MJPG",), ".mkv": ("XVID", "mp4v")}
DEFAULT_FPS = 30.0
PROBE_SIZE = (64, 64)  # (W, H), even: every codec accepts it


def _check_folder(flag: str, path: str) -> str:
    """The folder `path` would be written to; FlashVLError when it is missing or `path` is a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FlashVLError(f"{flag} {path}: folder {folder} does not exist; create it (mkdir -p {folder}) "
                           f"or pass a path in an existing folder")
    if os.path.isdir(path):
        raise FlashVLError(f"{flag} {path}: is a folder, expected a file path; pass e.g. {flag} "
                           f"{os.path.join(path, 'out' + ('.jsonl' if flag == '--jsonl' else '.mp4'))}")
    return folder


def _one_line(e: BaseException) -> str:
    """An exception as one line (cv2.error messages span several)."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


# ----------------------------------------------------------------------------- JSON Lines


class JsonlWriter:
    """One JSON object per line to a file or stdout; safe to call from several threads.

    A file is appended to, never truncated: a service restarted with the same --jsonl keeps the captions
    of its earlier runs (each run's ids start at 1 again; capture_ts tells the runs apart).  A last line
    left unfinished by a killed run is dropped first, so every line stays one JSON object.
    """

    def __init__(self, target: str):
        self.target = target
        self._lock = threading.Lock()
        if target == "-":
            self._stream, self._owned = sys.stdout, False
            return
        _check_folder("--jsonl", target)
        try:
            _drop_cut_line(target)
            self._stream = open(target, "a", encoding="utf-8", newline="\n")
        except OSError as e:
            raise FlashVLError(f"--jsonl {target}: cannot open for writing ({e.strerror or e}); "
                               f"check the folder's permissions or pass another path") from None
        self._owned = True

    def write(self, record: dict) -> None:
        """Append `record` as one line and flush it to the OS."""
        try:
            line = json.dumps(record, ensure_ascii=False, allow_nan=False, default=_json_default)
        except ValueError as e:  # NaN or +-inf: not JSON; a reader would choke on the whole file
            raise ValueError(f"--jsonl {self.target}: record has a NaN or infinite number "
                             f"({', '.join(_non_finite(record)) or e}); give None instead") from None
        with self._lock:
            if self._stream is None:
                raise ValueError(f"--jsonl {self.target}: write() after close()")
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None and self._owned:
            try:
                stream.close()  # flushes: a full disk (or /dev/full) shows here
            except OSError as e:
                raise FlashVLError(f"--jsonl {self.target}: cannot write ({e.strerror or e}); free some space or "
                                   f"write somewhere else") from None

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drop_cut_line(path: str) -> None:
    """A regular file whose last line a killed run left unfinished loses that fragment (half a JSON object,
    which no reader could parse), so the lines appended after it stay whole; pipes and ttys are left alone."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return
    except FileNotFoundError:
        return
    with open(path, "r+b") as f:
        end = pos = f.seek(0, os.SEEK_END)
        cut = 0
        while pos > 0:
            start = max(0, pos - (1 << 16))
            f.seek(start)
            i = f.read(pos - start).rfind(b"\n")
            if i >= 0:
                cut = start + i + 1
                break
            pos = start
        if cut != end:
            log.warning("--jsonl %s: dropped an unfinished last line of %d bytes (a run killed mid-write)", path,
                        end - cut)
            f.truncate(cut)


def _json_default(obj):
    """NumPy scalars and arrays (latencies, boxes) as their Python values; anything else is a bug."""
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    raise TypeError(f"{type(obj).__qualname__} is not JSON serialisable")


def _non_finite(obj, where: str = "") -> list[str]:
    """Paths of the NaN/inf numbers in a record, e.g. ['latency_ms', 'boxes[2]']."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _non_finite(v, f"{where}[{i}]")]
    if isinstance(obj, (float, np.floating)) and not math.isfinite(obj):
        return [where or "<record>"]
    return []


# ----------------------------------------------------------------------------- captioned video


class VideoSaver:
    """The frames, with their caption drawn in, to a video file, encoded on a writer thread."""

    def __init__(self, path: str, fps: float, lossless: bool = False, queue_frames: int = 64):
        self.path = str(path)
        ext = os.path.splitext(self.path)[1].lower()
        if ext not in CODECS:
            raise FlashVLError(f"--save {self.path}: unsupported extension {ext or '(none)'!r}, expected one of "
                               f"{', '.join(CODECS)}; e.g. --save {os.path.splitext(self.path)[0]}.mp4")
        if isinstance(queue_frames, bool) or not isinstance(queue_frames, int) or queue_frames < 1:
            raise FlashVLError(f"--save: queue_frames must be an integer >= 1, got {queue_frames!r}")
        check_opencv_path("--save", self.path)  # OpenCV's VideoWriter would crash on it
        folder = _check_folder("--save", self.path)
        try:
            fps = float(fps)
        except (TypeError, ValueError):
            fps = math.nan
        if not (math.isfinite(fps) and fps > 0):  # cameras and streams often report 0 or NaN
            log.info("--save %s: the source reports no usable frame rate (%s), writing at %g fps",
                     self.path, fps, DEFAULT_FPS)
            fps = DEFAULT_FPS
        self.fps = fps
        self.fourcc = _probe_codec(self.path, ext, folder, self.fps)
        # Frames go to a hidden file beside `path`, renamed over it once the video is finalised: a run that
        # fails or is killed never costs a video already at `path` (the extension picks the container).
        _remove_stale_partials(folder, os.path.basename(self.path), ext)
        self.partial = os.path.join(folder, f".{os.path.basename(self.path)}.{os.getpid()}-{next(_SAVERS)}"
                                            f".partial{ext}")
        self.lossless = lossless
        self.frames_written = 0  # written by the writer thread only
        self.dropped = 0  # frames offered that are not in the file
        self._queue: queue.Queue = queue.Queue(maxsize=queue_frames)
        self._lock = threading.Lock()  # guards _closed, dropped and the queue's intake
        self._close_lock = threading.Lock()  # one close() at a time; a second waits, then returns
        self._closed = False
        self._error: BaseException | None = None
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None  # (W, H) of the file, fixed by the first frame
        self._thread = threading.Thread(target=self._run, name="flashvl-video-saver", daemon=True)
        self._thread.start()

    # ---- capture thread

    def offer(self, image: np.ndarray, caption: str, header: str | None = None) -> None:
        """Queue a frame for the file (not copied: the caller must not change the image afterwards)."""
        item = (image, caption, header)
        while True:
            with self._lock:  # closing and queueing exclude each other, so no frame slips in behind close()
                if self._closed:
                    return
                if self._error is not None:  # the file is already broken; close() says why
                    self.dropped += 1
                    return
                try:
                    self._queue.put_nowait(item)
                    return
                except queue.Full:
                    if not self.lossless:  # the encoder is behind: lose the frame, never stall capture
                        self.dropped += 1
                        return
            time.sleep(0.002)  # lossless: wait for room outside the lock, so close() is never starved

    def _count_dropped(self) -> None:
        with self._lock:
            self.dropped += 1

    # ---- writer thread

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                if self._error is not None:  # keep draining, so that close() can put its stop mark
                    self._count_dropped()
                    continue
                try:
                    self._write(*item)
                except Exception as e:  # noqa: BLE001 -- reported by close(), never lost with the thread
                    self._error = e
                    log.error("--save %s: writing frame %d failed (%s); later frames are dropped",
                              self.path, self.frames_written, _one_line(e))
                    self._count_dropped()
        finally:
            if self._writer is not None:
                try:
                    self._writer.release()  # writes the mp4 index; without it the file is unreadable
                except Exception as e:  # noqa: BLE001
                    self._error = self._error or e

    def _write(self, image: np.ndarray, caption: str, header: str | None) -> None:
        if self._size is None:
            h, w = image.shape[:2]
            self._size = (w - w % 2, h - h % 2)  # codecs need even sizes; OpenCV would crop silently
            self._writer = cv2.VideoWriter(self.partial, cv2.VideoWriter_fourcc(*self.fourcc), self.fps,
                                           self._size)
            if not self._writer.isOpened():
                raise FlashVLError(f"cv2.VideoWriter could not open {self.path} at {w}x{h} with "
                                   f"{self.fourcc}; try --save with a .avi path (MJPG)")
        frame = _fit(image, self._size)  # [H0, W0, 3], the file's size
        self._writer.write(draw_caption(frame, caption, header))
        self.frames_written += 1

    # ---- any thread

    def close(self) -> None:
        """Write what is queued, finalise the file and stop the thread; the first close raises on failure."""
        with self._close_lock:
            with self._lock:
                if self._closed:
                    return
                self._closed = True
            self._queue.put(None)  # after the queued frames; the writer is draining, so room will come
            self._thread.join()
            if self._error is not None:
                kept = (f"{self.path} is left as it was, the frames written are in {self.partial}"
                        if os.path.exists(self.partial) else f"{self.path} is left as it was")
                raise FlashVLError(
                    f"--save {self.path}: the video writer failed after {self.frames_written} frames "
                    f"({_one_line(self._error)}); {kept}; check the disk space, or try a .avi path (MJPG)")
            if self.frames_written == 0:
                log.warning("--save %s: no frames were offered, no file written", self.path)
                _remove(self.partial)
                return
            try:
                if os.path.isfile(self.path):  # the video replaced keeps its permissions (a shared folder's 0664)
                    shutil.copymode(self.path, self.partial)
                os.replace(self.partial, self.path)
            except OSError as e:
                raise FlashVLError(f"--save {self.path}: cannot move the finished video there ({e.strerror or e}); "
                                   f"it is at {self.partial}") from None

    def discard(self) -> None:
        """Stop the writer and remove what it wrote, quietly: the error that ended the run is the one line."""
        with self._close_lock:
            with self._lock:
                if self._closed:
                    return
                self._closed = True
            self._queue.put(None)
            self._thread.join()
            _remove(self.partial)

    def __enter__(self) -> VideoSaver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A frame at the file's (W, H): odd edges cropped, other sizes (a camera that reconnected) resized."""
    h, w = image.shape[:2]
    if (w, h) == size:
        return image
    if (w - w % 2, h - h % 2) == size:
        return image[:size[1], :size[0]]  # [H0, W0, 3]
    shrink = w * h > size[0] * size[1]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


_SAVERS = itertools.count(1)  # one partial file name per saver, even several in one process


def _remove_stale_partials(folder: str, name: str, ext: str) -> None:
    """The partial files a killed run left beside `name` (its process is gone)."""
    left = re.compile(rf"\.{re.escape(name)}\.(\d+)-\d+\.partial{re.escape(ext)}")
    for entry in os.listdir(folder):
        m = left.fullmatch(entry)
        if m is not None and not process_alive(int(m[1])):
            _remove(os.path.join(folder, entry))


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _probe_codec(path: str, ext: str, folder: str, fps: float) -> str:
    """The first FourCC for `ext` that this OpenCV can encode, tried on a tiny file next to `path`."""
    for fourcc in CODECS[ext]:
        try:
            fd, probe = tempfile.mkstemp(prefix=".flashvl-probe-", suffix=ext, dir=folder)
        except OSError as e:
            raise FlashVLError(f"--save {path}: cannot write in {folder} ({e.strerror or e}); check the folder's "
                               f"permissions or pass a path in a writable folder") from None
        os.close(fd)
        try:
            writer = cv2.VideoWriter(probe, cv2.VideoWriter_fourcc(*fourcc), fps, PROBE_SIZE)
            ok = writer.isOpened()
            if ok:
                writer.write(np.zeros((PROBE_SIZE[1], PROBE_SIZE[0], 3), np.uint8))
            writer.release()
            ok = ok and os.path.getsize(probe) > 0
        except cv2.error:
            ok = False
        finally:
            os.remove(probe)
        if ok:
            return fourcc
        log.debug("--save %s: this OpenCV cannot write %s with %s", path, ext, fourcc)
    fix = "try a .avi path (MJPG is built into OpenCV)" if ext != ".avi" else "reinstall OpenCV (opencv-python)"
    raise FlashVLError(f"--save {path}: this OpenCV ({cv2.__version__}) cannot encode {ext} "
                       f"(tried {', '.join(CODECS[ext])}); {fix}")
