"""Held-out accuracy of an engine folder, through the runtime (ONNX Runtime or TensorRT), never PyTorch.

    evaluate(vl, n) -> Accuracy        n held-out scenes: the caption and two questions each, greedy
    evaluate_video(vl, path, truth)    every frame of a video file through the camera loop -> VideoAccuracy

Exact match: a caption or an answer counts only if it is the whole expected string.
NumPy, OpenCV and the runtime only, so the tests and `python -m export.demo eval` share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from export.demo import scenes
from runtime.api import FlashVL
from runtime.errors import FlashVLError
from runtime.video import Cadence, VideoSource

MAX_NEW_TOKENS = 32  # the longest caption is 4 groups: ~20 tokens


@dataclass(frozen=True)
class Miss:
    prompt: str
    expected: str
    got: str


@dataclass(frozen=True)
class Accuracy:
    caption: float  # share of exact captions
    questions: float  # share of exact answers
    n_captions: int
    n_questions: int
    misses: tuple[Miss, ...] = field(default=(), repr=False)

    def line(self) -> str:
        return (f"caption {self.caption:.1%} of {self.n_captions}, "
                f"questions {self.questions:.1%} of {self.n_questions}")


def evaluate(vl: FlashVL, n: int, seed: int = scenes.HELD_OUT_SEED) -> Accuracy:
    """Greedy caption and two answers for each of n held-out scenes (scenes.held_out)."""
    misses: list[Miss] = []

    def says(encoded, prompt: str, expected: str) -> bool:
        got = vl.generate(encoded, prompt, max_new_tokens=MAX_NEW_TOKENS).text
        if got != expected:
            misses.append(Miss(prompt, expected, got))
        return got == expected

    captions = answers = asked = 0
    for case in scenes.held_out(n, seed):
        encoded = vl.encode_prepared(vl.prepare_image(case.image))  # the vision graph once, three prompts
        captions += says(encoded, scenes.CAPTION_PROMPT, case.caption)
        answers += sum(says(encoded, q, a) for q, a in case.questions)
        asked += len(case.questions)
    return Accuracy(captions / n, answers / asked, n, asked, tuple(misses))


@dataclass(frozen=True)
class VideoAccuracy:
    caption: float  # share of captioned frames whose caption is exact
    frames: int  # frames captioned
    misses: tuple[Miss, ...] = field(default=(), repr=False)

    def line(self) -> str:
        return f"caption {self.caption:.1%} of {self.frames} frames"


def evaluate_video(vl: FlashVL, path: Path, truth: list[str]) -> VideoAccuracy:
    """Caption every frame of `path` in the camera loop (no drops); truth[i] is frame i's caption."""
    hits = total = 0
    misses: list[Miss] = []
    with vl.captions(VideoSource.file(path), scenes.CAPTION_PROMPT, Cadence(), realtime=False) as events:
        for ev in events:
            if not 0 <= ev.frame < len(truth):
                raise FlashVLError(f"{path}: the camera loop reported frame {ev.frame}, but the video was written "
                                   f"with {len(truth)} frames; rewrite it with export.demo.video")
            total += 1
            hits += ev.caption == truth[ev.frame]
            if ev.caption != truth[ev.frame]:
                misses.append(Miss(f"frame {ev.frame}", truth[ev.frame], ev.caption))
    if total == 0:
        raise FlashVLError(f"{path}: the camera loop captioned no frame; check that OpenCV can read the file")
    return VideoAccuracy(hits / total, total, tuple(misses))
