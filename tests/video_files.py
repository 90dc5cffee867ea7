"""Videos the tests write themselves (each frame says which frame it is) and a local HTTP server
that streams them, for the tests of runtime.video on the real OpenCV/FFmpeg path."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import cv2
import numpy as np


def frame_image(i: int, width: int, height: int) -> np.ndarray:
    """Frame i: its number as 8 black/white bars on top, seeded noise below (so the codec has bytes to damage)."""
    img = np.zeros((height, width, 3), np.uint8)
    img[height // 2:] = np.random.default_rng(i).integers(0, 256, (height - height // 2, width, 3), dtype=np.uint8)
    bar = width // 8
    for bit in range(8):
        if (i >> bit) & 1:
            img[: height // 2, bit * bar:(bit + 1) * bar] = 255
    return img


def frame_number(img: np.ndarray) -> int:
    height, width = img.shape[:2]
    bar = width // 8
    centre = img[height // 8: height // 2 - height // 8]  # away from the block edges the codec smears
    return sum(1 << bit for bit in range(8) if centre[:, bit * bar + bar // 4:(bit + 1) * bar - bar // 4].mean() > 128)


def write_video(path: Path, fourcc: str, size: tuple[int, int], fps: float, n: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened(), (path, fourcc)
    for i in range(n):
        writer.write(frame_image(i, *size))
    writer.release()
    return path



class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(directory: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
