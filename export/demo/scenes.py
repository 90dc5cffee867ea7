"""Synthetic scenes for the demo model: shapes in colours on a 2x2 layout, with true captions and answers.

    sample_scene(rng) -> Scene          a random scene (1-4 objects, one per quadrant; square, 4:3 or 3:4)
    draw(scene) -> BGR uint8 [H, W, 3]  the picture (OpenCV; what a camera or cv2.imread gives)
    caption(scene) -> str               "Two red circles and a blue square."
    questions(scene) -> [(q, a), ...]   every question the scene answers unambiguously
    pick_question(scene, rng)           a random question and its answer
    held_out(n) -> [Case]               the held-out set: scenes, images, caption, two random questions each
    corpus(n, seed) -> [str]            text in this language, for training the tokenizer

NumPy and OpenCV only (no torch): the runtime's tests draw held-out scenes with it.
The grammar is fixed, so a caption is right or wrong, and accuracy is exact match:
  caption   groups of equal (shape, colour), shapes in SHAPES order then colours in
            COLOURS order: "A red circle, two blue squares and a yellow triangle."
  answers   "Two."  "None."  "Red."  "Top left."  "Yes."  "No."
Sizes, exact positions, a small rotation, the background, noise and blur vary
and are never mentioned: the model must see past them.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}  # RGB
BACKGROUNDS = ((245, 245, 245), (205, 205, 205), (232, 222, 196), (200, 222, 240), (60, 60, 64), (24, 24, 28))
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
COUNT_WORDS = ("none", "one", "two", "three", "four")
MAX_OBJECTS = len(QUADRANTS)
CAPTION_PROMPT = "Describe the image."
SIZES = ((256, 256), (256, 256), (320, 240), (240, 320))  # (width, height): half square, half camera-shaped
HELD_OUT_SEED = 1_000_003  # the held-out scenes; training draws from its own seed
SAMPLES_SEED = 2_000_003  # samples/scene_N.png
JITTER = 0.06  # how far a centre strays from its quadrant's centre, as a fraction of the side


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    quadrant: int  # index into QUADRANTS
    x: float  # centre, as a fraction of the width
    y: float  # centre, as a fraction of the height
    size: float  # half the extent, as a fraction of min(width, height)
    angle: float  # degrees


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    background: int  # index into BACKGROUNDS
    width: int
    height: int
    noise: float  # std of the sensor noise, in 8-bit levels
    blur: bool


def sample_scene(rng: np.random.Generator, size: tuple[int, int] | None = None) -> Scene:
    """A random scene, SIZES-shaped or of `size` (width, height)."""
    width, height = SIZES[int(rng.integers(len(SIZES)))]  # drawn either way: `size` must not shift the stream
    if size is not None:
        width, height = size
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    quadrants = rng.permutation(len(QUADRANTS))[:n]
    things = []
    for q in sorted(quadrants.tolist()):
        extent = float(rng.uniform(0.12, 0.17))
        # near the quadrant's centre, never across a midline: the whole shape stays in its quadrant
        x = (0.5 if q % 2 else 0.0) + 0.25 + float(rng.uniform(-JITTER, JITTER))
        y = (0.5 if q >= 2 else 0.0) + 0.25 + float(rng.uniform(-JITTER, JITTER))
        things.append(Thing(SHAPES[int(rng.integers(len(SHAPES)))], list(COLOURS)[int(rng.integers(len(COLOURS)))],
                            q, x, y, extent, float(rng.uniform(-15, 15))))
    return Scene(tuple(things), int(rng.integers(len(BACKGROUNDS))), width, height,
                 noise=float(rng.uniform(0, 6)), blur=bool(rng.random() < 0.3))


# ----------------------------------------------------------------------------- drawing


def draw(scene: Scene, seed: int = 0) -> np.ndarray:
    """The scene as a BGR uint8 [height, width, 3] image; `seed` drives the noise only."""
    w, h = scene.width, scene.height
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = BACKGROUNDS[scene.background]
    side = min(w, h)
    for t in scene.things:
        cx, cy, r = t.x * w, t.y * h, t.size * side
        colour = COLOURS[t.colour]
        if t.shape == "circle":
            cv2.circle(rgb, _pt(cx, cy), int(round(r)), colour, -1, cv2.LINE_AA, 0)
        else:
            corners, start, reach, drop = (4, 45, 1.2 * r, 0.0) if t.shape == "square" else (3, -90, r, 0.25 * r)
            # drop: a triangle's box is centred on (cx, cy), not its centroid, so it looks as central as the rest
            pts = [(cx + reach * math.cos(math.radians(start + t.angle + k * 360 / corners)),
                    cy + drop + reach * math.sin(math.radians(start + t.angle + k * 360 / corners)))
                   for k in range(corners)]
            cv2.fillPoly(rgb, [np.round(np.array(pts)).astype(np.int32)], colour, cv2.LINE_AA)
    if scene.blur:
        rgb = cv2.GaussianBlur(rgb, (3, 3), 0)
    if scene.noise > 0:
        noise = np.random.default_rng(seed).standard_normal(rgb.shape, dtype=np.float32) * np.float32(scene.noise)
        rgb = np.clip(rgb + noise, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])  # BGR


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))


# ----------------------------------------------------------------------------- language


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def _count_phrase(n: int) -> str:
    return "a" if n == 1 else COUNT_WORDS[n]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def caption(scene: Scene) -> str:
    groups = Counter((t.shape, t.colour) for t in scene.things)
    order = sorted(groups, key=lambda g: (SHAPES.index(g[0]), list(COLOURS).index(g[1])))
    parts = [f"{_count_phrase(groups[g])} {g[1]} {_plural(g[0], groups[g])}" for g in order]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return _sentence(text)


def questions(scene: Scene) -> list[tuple[str, str]]:
    """Every (question, answer) this scene settles, in a fixed order."""
    shapes = Counter(t.shape for t in scene.things)
    colours = Counter(t.colour for t in scene.things)
    pairs = Counter((t.shape, t.colour) for t in scene.things)
    qa = [(f"How many {s}s are there?", _sentence(COUNT_WORDS[shapes[s]])) for s in SHAPES]
    qa += [(f"How many {c} shapes are there?", _sentence(COUNT_WORDS[colours[c]])) for c in COLOURS]
    for s in SHAPES:
        kinds = {t.colour for t in scene.things if t.shape == s}
        if len(kinds) == 1:
            qa.append((f"What colour is the {s}?" if shapes[s] == 1 else f"What colour are the {s}s?",
                       _sentence(kinds.pop())))
    for t in scene.things:
        if pairs[(t.shape, t.colour)] == 1:
            qa.append((f"Where is the {t.colour} {t.shape}?", _sentence(QUADRANTS[t.quadrant])))
    for s in SHAPES:
        for c in COLOURS:
            qa.append((f"Is there a {c} {s}?", "Yes." if pairs[(s, c)] else "No."))
    return qa


def pick_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """A question of a uniformly drawn kind ("How many", "What colour", "Where is", "Is there"), then
    uniformly within the kind: yes/no questions would otherwise be half of all."""
    kinds: dict[str, list[tuple[str, str]]] = {}
    for q, a in questions(scene):
        kinds.setdefault(" ".join(q.split()[:2]), []).append((q, a))
    group = list(kinds.values())[int(rng.integers(len(kinds)))]
    return group[int(rng.integers(len(group)))]


@dataclass(frozen=True)
class Case:
    scene: Scene
    image: np.ndarray  # BGR uint8 [H, W, 3]
    caption: str
    questions: tuple[tuple[str, str], ...]  # two (question, answer) pairs, drawn independently (may repeat)


def held_out(n: int, seed: int = HELD_OUT_SEED) -> list[Case]:
    """n scenes no training run draws (another seed), each with its caption and two questions."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        scene = sample_scene(rng)
        qa = (pick_question(scene, rng), pick_question(scene, rng))
        cases.append(Case(scene, draw(scene, seed=seed + i), caption(scene), qa))
    return cases


def corpus(n: int, seed: int) -> list[str]:
    """Prompts, captions and answers of `n` random scenes: the tokenizer's training text."""
    rng = np.random.default_rng(seed)
    lines = [CAPTION_PROMPT]
    for _ in range(n):
        scene = sample_scene(rng)
        lines.append(caption(scene))
        lines += [f"{q} {a}" for q, a in questions(scene)]
    return lines
