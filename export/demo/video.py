"""A video of held-out scenes for the camera loop's accuracy: each scene held for a few frames.

    write_scene_video(path, n_scenes, seed) -> truth: the true caption of every frame, in order

320x240 (a camera's 4:3), mp4v: the frames go through a lossy codec, as a camera's do, and each
frame has its own sensor noise.  OpenCV only.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from export.demo import scenes
from runtime.errors import FlashVLError

SIZE = (320, 240)
FPS = 8
FRAMES_PER_SCENE = 4
N_SCENES = 20  # 80 frames: what `export.demo eval --video` and the tests caption
SEED = scenes.HELD_OUT_SEED + 1


def write_scene_video(path: Path, n_scenes: int = N_SCENES, seed: int = SEED,
                      frames_per_scene: int = FRAMES_PER_SCENE) -> list[str]:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    if not writer.isOpened():
        raise FlashVLError(f"{path}: this OpenCV cannot write mp4v video")
    rng = np.random.default_rng(seed)
    truth = []
    try:
        for i in range(n_scenes):
            scene = scenes.sample_scene(rng, SIZE)
            for k in range(frames_per_scene):
                writer.write(scenes.draw(scene, seed=seed + i * frames_per_scene + k))
                truth.append(scenes.caption(scene))
    finally:
        writer.release()
    return truth
