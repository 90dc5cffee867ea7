"""Write samples/clip.mp4, the street clip of docs/camera-streams.md: 10 s at 15 fps, 640x360, made from the sample pictures.

    python samples/make_clip.py [OUT [WIDTH HEIGHT FPS]]     e.g. /tmp/cam720p60.mp4 1280 720 60

0-4 s the street stands still (a little sensor noise), 4-7 s a yellow ball crosses it, 7-10 s the
view cuts to shapes.png: a still scene, a moving object and a cut, so `--min-change` has something
to skip and something to catch.  Deterministic (seeded noise); OpenCV's mp4v encoder.
"""

import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).parent
W, H, FPS, SECONDS = 640, 360, 15, 10


def frames(W=W, H=H, FPS=FPS):
    rng = np.random.default_rng(0)
    street = cv2.resize(cv2.imread(str(HERE / "street.jpg")), (W, H), interpolation=cv2.INTER_AREA)
    shapes = cv2.resize(cv2.imread(str(HERE / "shapes.png")), (W, H), interpolation=cv2.INTER_AREA)
    for i in range(FPS * SECONDS):
        t = i / FPS
        frame = (street if t < 7 else shapes).copy()
        if 4 <= t < 7:
            x = int((t - 4) / 3 * (W + 80)) - 40
            cv2.circle(frame, (x, int(H * 0.75)), 45, (0, 215, 255), -1, cv2.LINE_AA)
        noise = rng.integers(-3, 4, frame.shape, dtype=np.int16)
        yield np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def main(out: str = str(HERE / "clip.mp4"), width: str = str(W), height: str = str(H), fps: str = str(FPS)) -> None:
    w, h, rate = int(width), int(height), int(fps)
    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), rate, (w, h))
    if not writer.isOpened():
        sys.exit(f"cannot write {out}: this OpenCV has no mp4v encoder")
    for frame in frames(w, h, rate):
        writer.write(frame)
    writer.release()
    print(f"wrote {out}: {rate * SECONDS} frames, {w}x{h} at {rate} fps")


if __name__ == "__main__":
    main(*sys.argv[1:])
