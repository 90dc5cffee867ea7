"""What flows from a video source to the captioner: a frame, where it came from, and source counters.

    Frame.image    [H, W, 3] uint8 BGR, as OpenCV gives it (C-contiguous, owned by the frame)
    Frame.seq      frames this source has delivered before this one (0, 1, 2, ...; never resets,
                   not even across reconnects or loops), so `b.seq - a.seq - 1` frames were
                   skipped between two captioned frames a and b
    Frame.index    the frame's position in its file (files), else equal to seq
    Frame.t_capture  time.perf_counter() when the frame was read or pushed (latency starts here)
    Frame.wall_ts    time.time() at the same moment (the timestamp users see)
    Frame.media_s    position in the media in seconds, cumulative over loops (files; None for live
                     sources), the clock `--interval` uses for a file read faster than real time
    Frame.stream     the name of the stream it belongs to (runtime.video.names), set as it is captured

A `VideoSource` names where frames come from; `runtime.video.sources` opens it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.arguments import check_opencv_path
from runtime.errors import FlashVLError

SOURCE_KINDS = ("camera", "file", "url", "gst")


class SourceError(FlashVLError):
    """A video source cannot be opened or read (one line, with the fix)."""


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # [H, W, 3] uint8 BGR
    seq: int
    index: int
    t_capture: float
    wall_ts: float
    media_s: float | None = None
    stream: str = ""

    @property
    def clock(self) -> float:
        """Seconds on the clock the caption cadence runs on: media time for files, capture time for live."""
        return self.t_capture if self.media_s is None else self.media_s


@dataclass(frozen=True)
class VideoSource:
    """Where frames come from.  `live` sources (camera, url, gst) are reopened with backoff when they
    drop; a file ends (or, with `loop`, starts again) at its end."""

    kind: str  # one of SOURCE_KINDS
    target: str | int  # V4L2 index, file path, URL or GStreamer pipeline
    loop: bool = False  # files only

    def __post_init__(self):
        if self.kind not in SOURCE_KINDS:
            raise SourceError(f"video source kind must be one of {list(SOURCE_KINDS)}, got {self.kind!r}")
        if self.kind == "camera" and (not isinstance(self.target, int) or isinstance(self.target, bool)
                                      or self.target < 0):
            raise SourceError(f"--camera: expected a device index 0, 1, ... (/dev/video0 is 0), got {self.target!r}")
        if self.kind != "camera" and (not isinstance(self.target, str) or not self.target.strip()):
            raise SourceError(f"--{self.flag_name}: expected a non-empty {self.kind} string, got {self.target!r}")
        if self.loop and self.kind != "file":
            raise SourceError(f"--loop repeats a file (--video); --{self.flag_name} is a live source that never ends")
        if self.kind != "camera":
            check_opencv_path(f"--{self.flag_name}", self.target)  # OpenCV would crash on it

    @classmethod
    def camera(cls, index: int = 0) -> VideoSource:
        return cls("camera", index)

    @classmethod
    def file(cls, path: str | Path, loop: bool = False) -> VideoSource:
        return cls("file", str(path), loop)

    @classmethod
    def url(cls, url: str) -> VideoSource:
        return cls("url", url)

    @classmethod
    def gst(cls, pipeline: str) -> VideoSource:
        return cls("gst", pipeline)

    @property
    def live(self) -> bool:
        return self.kind != "file"

    @property
    def flag_name(self) -> str:
        return {"camera": "camera", "file": "video", "url": "url", "gst": "gst"}[self.kind]

    def describe(self) -> str:
        """How the user named it, e.g. `--camera 0`, for log and error lines."""
        return f"--{self.flag_name} {self.target}"


@dataclass
class SourceStats:
    """Counters a source keeps while it runs (read them any time; written by the capture thread only)."""

    frames: int = 0  # frames delivered
    corrupt: int = 0  # frames that could not be decoded or came out malformed, skipped
    missing: int = 0  # files: frames the container promised that never came (a truncated end)
    outages: int = 0  # live sources: times the source dropped and was reopened
    outage_s: float = 0.0  # total seconds without a source
    loops: int = 0  # files with --loop: times the file started again
    fps: float = 0.0  # the source's frame rate as it reports it (0 when unknown)
    notes: list[str] = field(default_factory=list)  # one-line notices (truncated file, ...) for the summary
