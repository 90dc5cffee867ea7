"""The scene-change measure behind `--min-change`: is this frame different enough to caption again?

    thumbnail(image)       BGR uint8 [H, W, 3] -> f32 [32, 32, 3] in [0, 1]
    scene_change(a, b)     two thumbnails -> mean |a - b| over pixels and channels, a number in [0, 1]

Both frames shrink to 32x32 colour thumbnails by area averaging over every k-th pixel, k chosen
so each thumbnail pixel still averages at least 8x8 samples (sensor noise and compression
artefacts average out; about 1 ms for a 1080p frame on a 2-core CPU).

0 means the same picture, 1 black against white; the number is roughly the changed fraction of
the frame times the contrast.  Colour counts, not only brightness (a red object on a gray road of
the same luminance is a change).  Measured on samples/clip.mp4 (docs/camera-streams.md): the still
street with +-3 levels of noise 0.0014, a ball covering 5% of the frame 0.015, the cut to another
scene 0.21.  The lights going out is a change, and so is a large auto-exposure step: a needless
caption costs time, a missed change costs correctness.  The gate compares each frame with the
last frame that was captioned, so a slow drift adds up until it crosses the threshold.
"""

from __future__ import annotations

import cv2
import numpy as np

THUMB = 32  # thumbnail side; enough to see an object the size of a hand at arm's length


def thumbnail(image: np.ndarray) -> np.ndarray:
    # [H, W, 3] uint8 BGR -> [32, 32, 3] f32 in [0, 1]
    k = max(1, min(image.shape[:2]) // (THUMB * 8))
    sub = image[::k, ::k]  # [H/k, W/k, 3]
    return cv2.resize(sub, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def scene_change(a: np.ndarray, b: np.ndarray) -> float:
    # [32, 32, 3], [32, 32, 3] -> scalar in [0, 1]
    return float(np.abs(a - b).mean())
