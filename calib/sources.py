"""Where calibration images come from: a folder of images, one image file, or a video.

    iter_images(path, max_images, report) -> Iterator[CalibImage]
        path: a folder (its image files, top level, by name; other and hidden
        files are ignored), one image file, or a video file
        max_images: None for all, else at most this many (>= 1)
        report: a SourceReport, filled in as the images are read
    count_images(path, max_images) -> int, how many iter_images will attempt
    check_report(report, min_images=16) -> None, or a warning line when few were read

    CalibImage.rgb: RGB uint8 [H, W, 3]

Where there are more candidates than `max_images`, the picks are spread evenly:
the middle of each of `max_images` equal runs of the sorted files or of the
video's frames (30 frames, 5 picks -> frames 3, 9, 15, 21, 27). A file or frame
that cannot be decoded is skipped and recorded in the report, not fatal; a path
that does not exist, a folder without images, a video that cannot be opened or
holds no frames, and nothing readable at all raise CalibError.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from runtime.errors import FlashVLError, ImageError
from runtime.image import load_image

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")
MIN_IMAGES = 16


class CalibError(FlashVLError):
    """The calibration images cannot be found or read."""


@dataclass(frozen=True)
class CalibImage:
    name: str  # file name, or "clip.mp4@frame12"
    rgb: np.ndarray  # [H, W, 3] uint8 RGB


@dataclass
class SourceReport:
    used: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, one-line reason)


# ----------------------------------------------------------------------------- public


def iter_images(path, max_images: int | None, report: SourceReport) -> Iterator[CalibImage]:
    """The calibration images at `path`, decoded to RGB; bad files are skipped into `report`.

    Path and argument errors raise here, at the call; decoding happens as the iterator is consumed.
    """
    _check_max(max_images)
    path = _existing(path)
    if path.is_dir():
        return _from_files(_pick(_folder_images(path), max_images), report)
    if _is_video(path):
        total = _frame_total(path)
        return _from_video(path, total, _pick(list(range(total)), max_images), report)
    return _from_files([_image_file(path)], report)


def count_images(path, max_images: int | None) -> int:
    """How many images iter_images(path, max_images, ...) will attempt (for a progress bar)."""
    _check_max(max_images)
    path = _existing(path)
    if path.is_dir():
        return len(_pick(_folder_images(path), max_images))
    if _is_video(path):
        return len(_pick(list(range(_frame_total(path))), max_images))
    _image_file(path)
    return 1


def check_report(report: SourceReport, min_images: int = MIN_IMAGES) -> str | None:
    """Raise when no image was read; -> a one-line warning when fewer than `min_images` were, else None."""
    if report.used == 0:
        if not report.skipped:
            raise CalibError("no calibration images were read; point --images at a folder of images or a video file")
        name, reason = report.skipped[0]
        raise CalibError(
            f"none of the {len(report.skipped)} calibration images could be read (first: {name}: {reason}); "
            f"fix or replace them, or point --images at other images")
    if report.used < min_images:
        noun = "image" if report.used == 1 else "images"
        skipped = f" ({len(report.skipped)} skipped)" if report.skipped else ""
        return f"only {report.used} calibration {noun}{skipped}; {min_images} or more give stable ranges"
    return None


# ----------------------------------------------------------------------------- checks and listing


def _check_max(max_images) -> None:
    if max_images is None:
        return
    if isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)) or max_images < 1:
        raise CalibError(
            f"max images must be an integer >= 1 (or None for all), got {max_images!r}; "
            f"pass e.g. --max 64, or leave it out to use every image")


def _existing(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise CalibError(
            f"{p}: not found; expected a folder of images, an image file or a video file; check the --images path")
    return p


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS


def _image_file(path: Path) -> Path:
    if path.suffix.lower() not in IMAGE_EXTS:
        raise CalibError(
            f"{path}: not an image or video file by its extension (got {path.suffix or 'none'!r}); expected "
            f"an image ({', '.join(IMAGE_EXTS)}), a video ({', '.join(VIDEO_EXTS)}) or a folder of images")
    return path


def _folder_images(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name; hidden files and others are ignored."""
    files = sorted((p for p in folder.iterdir()
                    if not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS and p.is_file()),
                   key=lambda p: p.name)
    if not files:
        raise CalibError(
            f"{folder}: holds no image files ({', '.join(IMAGE_EXTS)}); "
            f"point --images at a folder of images or a video file")
    return files


def _pick(items: list, max_images: int | None) -> list:
    """Up to `max_images` items spread evenly: the middle of each of k equal runs."""
    n = len(items)
    if max_images is None or max_images >= n:
        return list(items)
    k = int(max_images)
    return [items[(2 * i + 1) * n // (2 * k)] for i in range(k)]


# ----------------------------------------------------------------------------- decoding


def _from_files(files: list[Path], report: SourceReport) -> Iterator[CalibImage]:
    for f in files:
        try:
            rgb = load_image(f)  # files always decode to RGB; `channels` only concerns arrays
        except ImageError as e:
            _skip(report, f.name, str(e))
            continue
        report.used += 1
        yield CalibImage(f.name, rgb)


def _open_video(path: Path) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise CalibError(
            f"{path}: OpenCV cannot open this video; re-encode it (e.g. ffmpeg -i IN -c:v libx264 out.mp4) "
            f"or point --images at a folder of images")
    return cap


def _frame_total(path: Path) -> int:
    """The number of frames: the container's count, or a sequential count when it has none."""
    cap = _open_video(path)
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if total <= 0:  # streams without an index (some .webm, .mkv): count by grabbing
            total = 0
            while cap.grab():
                total += 1
    finally:
        cap.release()
    if total == 0:
        raise CalibError(f"{path}: the video holds no frames; check the file, or point --images at a folder of images")
    return total


def _from_video(path: Path, total: int, indices: list[int], report: SourceReport) -> Iterator[CalibImage]:
    """Frames at `indices` (ascending), BGR -> RGB; seek only where the next pick is not the next frame."""
    cap = _open_video(path)
    read = 0
    try:
        pos = 0  # index of the frame cap.read() returns next
        for idx in indices:
            if idx != pos and not cap.set(cv2.CAP_PROP_POS_FRAMES, idx):
                while pos < idx and cap.grab():  # the backend cannot seek: walk forward
                    pos += 1
            ok, frame = cap.read()  # [H, W, 3] BGR
            pos = idx + 1
            name = f"{path.name}@frame{idx}"
            if not ok or frame is None or frame.size == 0:
                _skip(report, name, f"{path}: frame {idx} of {total} could not be decoded")
                continue
            read += 1
            report.used += 1
            yield CalibImage(name, load_image(frame, channels="bgr"))  # [H, W, 3] RGB
    finally:
        cap.release()
    if read == 0:
        raise CalibError(
            f"{path}: none of the {len(indices)} sampled frames could be decoded; re-encode the video "
            f"(e.g. ffmpeg -i IN -c:v libx264 out.mp4) or point --images at a folder of images")


def _skip(report: SourceReport, name: str, reason: str) -> None:
    log.warning("skipping %s: %s", name, reason)
    report.skipped.append((name, reason))
