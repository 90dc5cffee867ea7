"""Draw the committed calibration image set `calib/images/` (NumPy + OpenCV only).

    python -m calib.make_images [--out calib/images] [--only NAME ...]

    make_image(name) -> the encoded file (bytes) for one name in IMAGES
    write_images(out, names=None) -> the paths written, every image by default

25 images of what a VLM is shown: outdoor scenes, a street in perspective, a
portrait drawing, shapes, a document page, a photographed page, a receipt,
charts, textures at several scales, a low-light and an over-exposed photo and two
UI screenshots, in sizes from 400x1000 to 1280x720, JPEG (quality 90) and PNG.

Deterministic: each image is drawn from its own generator, seeded with SEED and
the file name, so one image can be redrawn alone. A run reproduces the committed
files byte for byte on the OpenCV that wrote them (WRITTEN_WITH). Another build
writes other bytes for the same pictures: its libjpeg rounds differently, and
OpenCV's text rendering changed between builds (5.1's font metrics wrap the
paragraphs at other words). tests/test_calib_sources.py bounds the difference.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import cv2
import numpy as np

from runtime.cli_parser import CliParser

SEED = 20240611
WRITTEN_WITH = "5.0."  # the OpenCV version prefix that wrote calib/images/
DEFAULT_OUT = Path(__file__).resolve().parent / "images"
JPEG_QUALITY = 90
FONT = cv2.FONT_HERSHEY_SIMPLEX
AA = cv2.LINE_AA

WORDS = ("the of and model image vision token layer window camera frame street river light shadow "
         "north report quarter revenue growth sample batch signal value range scale engine device "
         "memory latency budget during after before across between without under above market city "
         "garden morning evening station network update version release change result table figure "
         "section method data field north south west east small large fast slow quiet bright dark").split()


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng([SEED, zlib.crc32(name.encode())])


def _bgr(hex_rgb: str) -> tuple[int, int, int]:
    """'#RRGGBB' -> an OpenCV (B, G, R) colour."""
    v = int(hex_rgb.lstrip("#"), 16)
    return (v & 255, (v >> 8) & 255, v >> 16)


def _shade(color, k: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c * k))) for c in color)


def _jitter(rng, color, amount: int = 18) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


def _sentence(rng, n: int) -> str:
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), n)]
    return (" ".join(words)).capitalize() + "."


# ----------------------------------------------------------------------------- fields


def _gradient(h: int, w: int, top, bottom) -> np.ndarray:
    """Vertical blend of two BGR colours -> float32 [h, w, 3]."""
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]  # [h, 1, 1]
    return np.broadcast_to(np.float32(top) * (1 - t) + np.float32(bottom) * t, (h, w, 3)).copy()


def _smooth_noise(rng, h: int, w: int, cell: int) -> np.ndarray:
    """Uniform noise on a grid of `cell` px, bicubically upsampled -> float32 [h, w], about [0, 1]."""
    small = rng.random((h // cell + 2, w // cell + 2), dtype=np.float32)  # [gh, gw]
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)  # [h, w]


def _fractal(rng, h: int, w: int, cells=(96, 32, 12, 4)) -> np.ndarray:
    """Octaves of smooth noise, halving the weight per octave -> float32 [h, w] in [0, 1]."""
    acc = np.zeros((h, w), np.float32)
    for i, cell in enumerate(cells):
        acc += _smooth_noise(rng, h, w, cell) * 0.5 ** i
    acc -= acc.min()
    return acc / max(float(acc.max()), 1e-6)


def _finish(img: np.ndarray, rng, blur: float = 0.0, grain: float = 0.0) -> np.ndarray:
    """Optional lens blur and sensor grain -> uint8 [H, W, 3]."""
    out = img.astype(np.float32)
    if blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), blur)
    if grain > 0:
        out += rng.normal(0.0, grain, out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _paste_quad(dst: np.ndarray, src: np.ndarray, quad) -> None:
    """Warp `src` [h, w, 3] onto the quadrilateral `quad` (tl, tr, br, bl) of `dst`, in place."""
    h, w = src.shape[:2]
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    m = cv2.getPerspectiveTransform(corners, np.float32(quad))
    size = (dst.shape[1], dst.shape[0])
    warped = cv2.warpPerspective(src, m, size, flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full((h, w), 255, np.uint8), m, size, flags=cv2.INTER_LINEAR)
    a = (mask.astype(np.float32) / 255.0)[:, :, None]  # [H, W, 1]
    dst[:] = np.rint(dst * (1 - a) + warped * a).astype(dst.dtype)


# ----------------------------------------------------------------------------- scene parts


def _sun(img: np.ndarray, cx: int, cy: int, r: int, color=(190, 250, 255)) -> None:
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]].astype(np.float32)
    d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    glow = np.exp(-np.maximum(d - r, 0) / (r * 1.5))[:, :, None]  # [H, W, 1]
    img[:] = np.clip(img + glow * 90, 0, 255).astype(img.dtype)
    cv2.circle(img, (cx, cy), r, color, -1, AA)


def _cloud(img: np.ndarray, rng, cx: int, cy: int, s: int) -> None:
    for _ in range(6):
        dx, dy = int(rng.integers(-2 * s, 2 * s)), int(rng.integers(-s // 2, s // 3))
        ax = int(s * rng.uniform(0.7, 1.3))
        cv2.ellipse(img, (cx + dx, cy + dy), (ax, int(ax * 0.6)), 0, 0, 360, (250, 248, 245), -1, AA)


def _hills(img: np.ndarray, rng, y0: float, amp: float, color, wavelength: float) -> None:
    h, w = img.shape[:2]
    xs = np.arange(0, w + 8, 8)
    phase = rng.uniform(0, 2 * np.pi, 2)
    ys = y0 * h + amp * h * (np.sin(xs / wavelength + phase[0]) + 0.5 * np.sin(xs / wavelength * 2.3 + phase[1]))
    pts = np.int32(np.vstack([np.column_stack([xs, ys]), [[w, h], [0, h]]]))
    cv2.fillPoly(img, [pts], color, AA)


def _tree(img: np.ndarray, rng, x: int, base: int, s: int) -> None:
    cv2.rectangle(img, (x - s // 10, base - s), (x + s // 10, base), _bgr("#5b3a1e"), -1)
    green = _jitter(rng, _bgr("#2f6b2a"), 20)
    for _ in range(7):
        dx, dy = int(rng.integers(-s // 3, s // 3 + 1)), int(rng.integers(-s // 3, s // 4 + 1))
        cv2.circle(img, (x + dx, base - s + dy), int(s * rng.uniform(0.28, 0.42)), _jitter(rng, green, 12), -1, AA)


def _pine(img: np.ndarray, x: int, base: int, s: int, color, snow: bool = False) -> None:
    cv2.rectangle(img, (x - s // 14, base - s // 5), (x + s // 14, base), _bgr("#4a2f18"), -1)
    for i in range(3):
        top, bottom, half = base - s + i * s // 4, base - s // 6 - (2 - i) * s // 6, s // 5 + i * s // 9
        tri = np.int32([[x, top], [x + half, bottom], [x - half, bottom]])
        cv2.fillPoly(img, [tri], color, AA)
        if snow:
            cv2.line(img, (x - half + 3, bottom), (x + half - 3, bottom), (245, 240, 235), 3, AA)


def _house(img: np.ndarray, x: int, base: int, w: int, h: int, wall, roof) -> None:
    cv2.rectangle(img, (x, base - h), (x + w, base), wall, -1)
    roof_pts = [[x - w // 10, base - h], [x + w + w // 10, base - h], [x + w // 2, base - h - h * 2 // 3]]
    cv2.fillPoly(img, [np.int32(roof_pts)], roof, AA)
    cv2.rectangle(img, (x + w * 2 // 5, base - h * 11 // 20), (x + w * 3 // 5, base), _bgr("#6b4226"), -1)
    for wx in (x + w // 8, x + w * 11 // 16):
        cv2.rectangle(img, (wx, base - h * 3 // 4), (wx + w // 5, base - h * 2 // 5), _bgr("#bcd8ee"), -1)
        cv2.rectangle(img, (wx, base - h * 3 // 4), (wx + w // 5, base - h * 2 // 5), _shade(wall, 0.5), 2)


# ----------------------------------------------------------------------------- scenes


def _meadow(rng, w: int, h: int) -> np.ndarray:
    img = _gradient(h, w, _bgr("#3f7fd1"), _bgr("#c9e3f5")).astype(np.uint8)
    _sun(img, int(w * 0.8), int(h * 0.18), h // 14)
    for i in range(4):
        _cloud(img, rng, int(w * (0.1 + 0.22 * i)), int(h * rng.uniform(0.1, 0.3)), h // 16)
    _hills(img, rng, 0.55, 0.04, _bgr("#7f9fb8"), w / 9)
    _hills(img, rng, 0.64, 0.03, _bgr("#5e8f3e"), w / 6)
    grass = _fractal(rng, h, w, (48, 12, 3))[:, :, None] * 50 - 25  # [h, w, 1]
    ground = np.arange(h)[:, None, None] > h * 0.66
    img = np.clip(img + grass * ground, 0, 255).astype(np.uint8)
    cv2.fillPoly(img, [np.int32([[w * 0.46, h], [w * 0.58, h], [w * 0.53, h * 0.66], [w * 0.51, h * 0.66]])],
                 _bgr("#b59b72"), AA)
    _house(img, int(w * 0.6), int(h * 0.7), w // 9, h // 8, _bgr("#e8d9b5"), _bgr("#a23b2a"))
    for i in range(9):
        x = int(w * (0.05 + 0.1 * i + rng.uniform(-0.03, 0.03)))
        if not 0.55 < x / w < 0.75:
            _tree(img, rng, x, int(h * rng.uniform(0.68, 0.9)), int(h * rng.uniform(0.12, 0.22)))
    return _finish(img, rng, blur=1.0, grain=3.0)


def _sunset(rng, w: int, h: int) -> np.ndarray:
    horizon = int(h * 0.62)
    img = _gradient(h, w, _bgr("#3b2a6b"), _bgr("#ff9a3c")).astype(np.uint8)
    _sun(img, w // 2 - 40, horizon, h // 10, _bgr("#fff1c1"))
    sea = _gradient(h - horizon, w, _bgr("#e07b3a"), _bgr("#1d2147"))
    waves = _smooth_noise(rng, h - horizon, w, 6)[:, :, None]
    streaks = cv2.resize(rng.random((h - horizon, 24), dtype=np.float32), (w, h - horizon))[:, :, None]
    path = np.exp(-((np.arange(w) - w / 2 + 40) / (w * 0.12)) ** 2)[None, :, None]  # [1, w, 1] the sun's glitter
    sea += (waves - 0.5) * 40 + (streaks > 0.7) * path * 80
    img[horizon:] = np.clip(sea, 0, 255).astype(np.uint8)
    for x in (int(w * 0.08), int(w * 0.86)):
        cv2.fillPoly(img, [np.int32([[x - 12, h], [x + 12, h], [x + 26, horizon - 90], [x + 18, horizon - 92]])],
                     (30, 18, 22), AA)
        for a in np.linspace(0.3, 2.8, 6):
            tip = (int(x + 22 + 70 * np.cos(a)), int(horizon - 90 + 40 * np.sin(a) - 10))
            cv2.line(img, (x + 22, horizon - 92), tip, (30, 18, 22), 6, AA)
    for _ in range(5):
        bx, by = int(rng.integers(w // 5, w * 4 // 5)), int(rng.integers(h // 8, h // 3))
        cv2.polylines(img, [np.int32([[bx - 9, by - 4], [bx, by + 2], [bx + 9, by - 4]])], False, (40, 25, 35), 2, AA)
    return _finish(img, rng, blur=0.8, grain=2.5)


def _village(rng, w: int, h: int) -> np.ndarray:
    img = _gradient(h, w, _bgr("#6fa8dc"), _bgr("#e3eef7")).astype(np.uint8)
    for i in range(3):
        _cloud(img, rng, int(w * (0.2 + 0.3 * i)), int(h * 0.15), h // 18)
    _hills(img, rng, 0.5, 0.03, _bgr("#6d9c52"), w / 5)
    cv2.rectangle(img, (0, int(h * 0.6)), (w, h), _bgr("#7bab4f"), -1)
    cv2.fillPoly(img, [np.int32([[0, h * 0.8], [w, h * 0.72], [w, h * 0.82], [0, h * 0.94]])], _bgr("#9a948a"), AA)
    walls = ["#f2e3c6", "#d9a47c", "#f7f2ea", "#c9d6df", "#e8c170"]
    roofs = ["#8c2d19", "#4d4d4d", "#a0522d", "#5a3d2b", "#7a2e2e"]
    for i in range(5):
        bw = int(w * rng.uniform(0.11, 0.15))
        _house(img, int(w * (0.03 + 0.19 * i)), int(h * (0.66 + 0.02 * (i % 2))), bw, int(bw * 0.8),
               _bgr(walls[i]), _bgr(roofs[i]))
    for i in range(7):
        _tree(img, rng, int(w * (0.12 + 0.13 * i)), int(h * 0.62), int(h * rng.uniform(0.1, 0.16)))
    for x in range(0, w, 22):  # fence along the road
        cv2.line(img, (x, int(h * 0.79 - x * 0.08 * h / w) + 2), (x, int(h * 0.74 - x * 0.08 * h / w)),
                 _bgr("#f5f0e6"), 3)
    return _finish(img, rng, blur=0.9, grain=3.0)


def _snow(rng, w: int, h: int) -> np.ndarray:
    img = _gradient(h, w, _bgr("#9aa7b5"), _bgr("#e6e9ee")).astype(np.uint8)
    _hills(img, rng, 0.55, 0.05, _bgr("#c7d0dc"), w / 4)
    _hills(img, rng, 0.68, 0.03, _bgr("#f3f5f8"), w / 3)
    shade = _fractal(rng, h, w, (64, 16))[:, :, None] * 30 - 15
    img = np.clip(img + shade * (np.arange(h)[:, None, None] > h * 0.62), 0, 255).astype(np.uint8)
    _house(img, int(w * 0.55), int(h * 0.78), w // 5, h // 7, _bgr("#7a4b2a"), _bgr("#f4f6f9"))
    for i in range(8):
        _pine(img, int(w * rng.uniform(0.02, 0.98)), int(h * rng.uniform(0.62, 0.95)), int(h * rng.uniform(0.15, 0.3)),
              _jitter(rng, _bgr("#1f4a33"), 10), snow=True)
    for _ in range(260):
        flake = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, flake, int(rng.integers(1, 3)), (252, 252, 252), -1, AA)
    return _finish(img, rng, blur=0.7, grain=2.5)


def _street(rng, w: int, h: int, night: bool = False) -> np.ndarray:
    """A road to a vanishing point, facades warped onto its sides, cars and lamps scaled by depth."""
    vx, vy = w // 2, int(h * 0.42)
    img = _gradient(h, w, _bgr("#8fb8e8"), _bgr("#dfe9f2")).astype(np.uint8)
    cv2.fillPoly(img, [np.int32([[vx - 8, vy], [vx + 8, vy], [w * 0.95, h], [w * 0.05, h]])], _bgr("#55585c"), AA)
    for side in (-1, 1):  # sidewalks
        cv2.fillPoly(img, [np.int32([[vx + side * 8, vy], [vx + side * 14, vy], [vx + side * w * 0.5, h * 0.95],
                                     [vx + side * w * 0.45, h]])], _bgr("#a9a39a"), AA)
    for i in range(10):  # centre dashes, shorter with depth
        t0, t1 = (i / 10) ** 2, ((i + 0.5) / 10) ** 2
        y0, y1 = vy + (h - vy) * t0, vy + (h - vy) * t1
        cv2.fillPoly(img, [np.int32([[vx - 1 - 6 * t0, y0], [vx + 1 + 6 * t0, y0], [vx + 1 + 6 * t1, y1],
                                     [vx - 1 - 6 * t1, y1]])], _bgr("#f2f2f2"), AA)
    for side in (-1, 1):
        x_near = vx + side * w * 0.36
        for b in range(4):  # four buildings per side, each further along
            t_a, t_b = 1.0 - b * 0.22, 1.0 - (b + 1) * 0.22
            near, far = x_near * t_a + vx * (1 - t_a), x_near * t_b + vx * (1 - t_b)
            height = (vy + 40) * rng.uniform(0.55, 1.0)  # roof line runs to the vanishing point
            top_near, top_far = vy - height * t_a, vy - height * t_b
            bot_near, bot_far = vy + (h * 0.92 - vy) * t_a, vy + (h * 0.92 - vy) * t_b
            facade = np.zeros((300, 240, 3), np.uint8)
            facade[:] = _jitter(rng, _bgr(["#b9a48a", "#8a6f5a", "#c8c2b8", "#9b4a3c"][(b + side) % 4]), 15)
            for r in range(6):
                for c in range(4):
                    lit = night and rng.random() < 0.45
                    cv2.rectangle(facade, (18 + c * 56, 16 + r * 44), (52 + c * 56, 46 + r * 44),
                                  (40, 190, 250) if lit else (150, 120, 95), -1)
            quad = [(far, top_far), (near, top_near), (near, bot_near), (far, bot_far)] if side < 0 else \
                   [(near, top_near), (far, top_far), (far, bot_far), (near, bot_near)]
            _paste_quad(img, facade, quad)
    for t, x_off, color in ((0.85, -0.18, "#b22222"), (0.45, 0.06, "#1f4e99"), (0.25, -0.03, "#e0e0e0")):
        cx, cy, s = vx + x_off * w * t, vy + (h - vy) * t * 0.95, 160 * t
        cv2.rectangle(img, (int(cx - s), int(cy - s * 0.55)), (int(cx + s), int(cy)), _bgr(color), -1)
        cv2.rectangle(img, (int(cx - s * 0.7), int(cy - s * 0.95)), (int(cx + s * 0.7), int(cy - s * 0.5)),
                      _shade(_bgr(color), 0.8), -1)
        cv2.rectangle(img, (int(cx - s * 0.6), int(cy - s * 0.88)), (int(cx + s * 0.6), int(cy - s * 0.58)),
                      (70, 55, 45), -1)
        for wx in (cx - s * 0.65, cx + s * 0.65):
            cv2.circle(img, (int(wx), int(cy)), max(2, int(s * 0.22)), (20, 20, 20), -1, AA)
        for lx in (cx - s * 0.85, cx + s * 0.85):
            lamp = (210, 250, 255) if night else (200, 210, 220)
            cv2.circle(img, (int(lx), int(cy - s * 0.35)), max(2, int(s * 0.09)), lamp, -1, AA)
    for t in (0.95, 0.6, 0.38, 0.22):  # lamp posts on the right sidewalk
        x, base = vx + w * 0.42 * t, vy + (h * 0.93 - vy) * t
        cv2.line(img, (int(x), int(base)), (int(x), int(base - 330 * t)), (40, 40, 45), max(2, int(7 * t)), AA)
        cv2.circle(img, (int(x - 14 * t), int(base - 330 * t)), max(2, int(12 * t)), (180, 240, 255), -1, AA)
    if night:
        img = np.clip(img.astype(np.float32) * 0.25, 0, 255).astype(np.uint8)
    return _finish(img, rng, blur=0.8, grain=3.0)


def _lowlight(rng, w: int, h: int) -> np.ndarray:
    """A room at night: dim, warm lamp glow, blue moonlit window, heavy sensor noise."""
    img = _gradient(h, w, _bgr("#5a5048"), _bgr("#3a302a"))
    img[int(h * 0.7):] = _bgr("#4a3526")
    cv2.rectangle(img, (int(w * 0.58), int(h * 0.12)), (int(w * 0.9), int(h * 0.55)), _bgr("#30507a"), -1)
    cv2.rectangle(img, (int(w * 0.58), int(h * 0.12)), (int(w * 0.9), int(h * 0.55)), _bgr("#2a221c"), 8)
    cv2.line(img, (int(w * 0.74), int(h * 0.12)), (int(w * 0.74), int(h * 0.55)), _bgr("#2a221c"), 6)
    cv2.rectangle(img, (int(w * 0.1), int(h * 0.55)), (int(w * 0.5), int(h * 0.6)), _bgr("#6b4a30"), -1)
    for x in (0.13, 0.47):
        cv2.rectangle(img, (int(w * x), int(h * 0.6)), (int(w * x) + 10, int(h * 0.85)), _bgr("#4b3322"), -1)
    shade = [[w * 0.2, h * 0.32], [w * 0.3, h * 0.32], [w * 0.33, h * 0.42], [w * 0.17, h * 0.42]]  # lamp shade
    cv2.fillPoly(img, [np.int32(shade)], _bgr("#f0d9a8"), AA)
    cv2.line(img, (int(w * 0.25), int(h * 0.42)), (int(w * 0.25), int(h * 0.55)), (60, 60, 60), 4, AA)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    glow = np.exp(-((xx - w * 0.25) ** 2 + (yy - h * 0.45) ** 2) / (2 * (w * 0.18) ** 2))[:, :, None]
    img = img * (0.35 + 0.9 * glow) + glow * np.float32(_bgr("#ffb060")) * 0.35
    dark = cv2.GaussianBlur(img, (0, 0), 1.5) * 0.3  # about -2 EV after the room was lit
    shot = rng.normal(0, 1, dark.shape).astype(np.float32) * np.sqrt(dark + 4.0)
    chroma = cv2.resize(rng.normal(0, 3, (h // 4, w // 4, 3)).astype(np.float32), (w, h))
    return _finish(dark + shot + chroma, rng)


def _overexposed(rng, w: int, h: int) -> np.ndarray:
    """A beach at noon, a stop over: sky, surf and sand clip to white, the parasol survives."""
    horizon = int(h * 0.45)
    img = _gradient(h, w, _bgr("#7db4e6"), _bgr("#cfe6f7"))
    img[horizon:int(h * 0.6)] = _gradient(int(h * 0.6) - horizon, w, _bgr("#2a7fb0"), _bgr("#5fb7c9"))
    sand = _gradient(h - int(h * 0.6), w, _bgr("#e8d3a6"), _bgr("#d9be8a"))
    sand += (_fractal(rng, h - int(h * 0.6), w, (40, 8, 2))[:, :, None] - 0.5) * 40
    img[int(h * 0.6):] = sand
    img = img.astype(np.uint8)
    for x in range(0, w, 4):  # surf line
        y = int(h * 0.6 + 6 * np.sin(x / 37.0))
        cv2.circle(img, (x, y), 4, (250, 250, 250), -1, AA)
    _sun(img, int(w * 0.2), int(h * 0.12), h // 12)
    cv2.ellipse(img, (int(w * 0.65), int(h * 0.78)), (w // 10, h // 30), 0, 180, 360, _bgr("#e03a3a"), -1, AA)
    cv2.line(img, (int(w * 0.65), int(h * 0.78)), (int(w * 0.66), int(h * 0.9)), (60, 60, 60), 3, AA)
    cv2.rectangle(img, (int(w * 0.55), int(h * 0.85)), (int(w * 0.72), int(h * 0.9)), _bgr("#3a8fd9"), -1)
    blown = img.astype(np.float32) * 1.45 + 40  # about +1 stop and lifted blacks, then the sensor clips
    return _finish(blown, rng, blur=1.2, grain=2.0)


def _portrait(rng, w: int, h: int) -> np.ndarray:
    img = _gradient(h, w, _bgr("#5d7a6e"), _bgr("#2f3d3a")).astype(np.uint8)
    for _ in range(14):  # out-of-focus background lights
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h // 2))), int(rng.integers(12, 40)),
                   _jitter(rng, _bgr("#c9d8a0"), 40), -1, AA)
    img = cv2.GaussianBlur(img, (0, 0), 9)
    cx, cy, fw, fh = w // 2, int(h * 0.42), int(w * 0.22), int(h * 0.21)
    skin, hair = _bgr("#e0b48f"), _bgr("#3b2517")
    cv2.ellipse(img, (cx, h + 20), (int(w * 0.48), int(h * 0.3)), 0, 180, 360, _bgr("#2d4f8c"), -1, AA)
    cv2.rectangle(img, (cx - fw // 3, cy + fh - 10), (cx + fw // 3, int(h * 0.78)), _shade(skin, 0.85), -1)
    cv2.ellipse(img, (cx, cy - fh // 5), (int(fw * 1.15), int(fh * 1.05)), 0, 0, 360, hair, -1, AA)
    for side in (-1, 1):
        cv2.ellipse(img, (cx + side * fw, cy + 5), (fw // 6, fh // 5), 0, 0, 360, _shade(skin, 0.9), -1, AA)
    face = np.zeros(img.shape[:2], np.uint8)
    cv2.ellipse(face, (cx, cy), (fw, fh), 0, 0, 360, 255, -1, AA)
    xx = np.arange(w, dtype=np.float32)[None, :, None]
    lit = np.float32(skin) * (1.05 - 0.25 * np.clip((xx - cx + fw) / (2 * fw), 0, 1))  # key light from the left
    a = (face.astype(np.float32) / 255)[:, :, None]
    img = np.rint(img * (1 - a) + np.broadcast_to(lit, img.shape) * a).astype(np.uint8)
    cv2.ellipse(img, (cx, cy - int(fh * 0.8)), (int(fw * 1.05), int(fh * 0.45)), 0, 180, 360, hair, -1, AA)
    for side in (-1, 1):
        ex, ey = cx + side * int(fw * 0.4), cy - int(fh * 0.1)
        cv2.ellipse(img, (ex, ey), (fw // 5, fh // 11), 0, 0, 360, (240, 240, 245), -1, AA)
        cv2.circle(img, (ex, ey), fh // 13, _bgr("#5a3c22"), -1, AA)
        cv2.circle(img, (ex, ey), fh // 30, (15, 15, 15), -1, AA)
        cv2.circle(img, (ex - 3, ey - 3), 2, (255, 255, 255), -1, AA)
        cv2.ellipse(img, (ex, ey - fh // 6), (fw // 4, fh // 14), 0, 200, 340, hair, 5, AA)
    cv2.line(img, (cx, cy - fh // 12), (cx - fw // 12, cy + fh // 4), _shade(skin, 0.75), 3, AA)
    cv2.ellipse(img, (cx, cy + fh // 4), (fw // 8, fh // 20), 0, 0, 180, _shade(skin, 0.7), 2, AA)
    cv2.ellipse(img, (cx, cy + int(fh * 0.5)), (fw // 3, fh // 9), 0, 10, 170, _bgr("#a8464a"), 4, AA)
    return _finish(img, rng, blur=1.1, grain=3.0)


# ----------------------------------------------------------------------------- shapes and textures


def _shapes_on(img: np.ndarray, rng, n: int, outline: bool, alpha: float = 1.0) -> np.ndarray:
    palette = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#111111",
               "#fafafa"]
    h, w = img.shape[:2]
    for _ in range(n):
        layer = img.copy()
        color = _bgr(palette[int(rng.integers(0, len(palette)))])
        x, y, s = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(min(h, w) // 20, min(h, w) // 6))
        kind = int(rng.integers(0, 4))
        if kind == 0:
            cv2.circle(layer, (x, y), s, color, -1, AA)
        elif kind == 1:
            cv2.rectangle(layer, (x - s, y - s // 2), (x + s, y + s // 2), color, -1, AA)
        elif kind == 2:
            cv2.fillPoly(layer, [np.int32([[x, y - s], [x + s, y + s], [x - s, y + s]])], color, AA)
        else:
            ang = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2
            rad = np.where(np.arange(10) % 2 == 0, s, s * 0.45)
            cv2.fillPoly(layer, [np.int32(np.column_stack([x + rad * np.cos(ang), y + rad * np.sin(ang)]))], color, AA)
        if outline and kind == 0:
            cv2.circle(layer, (x, y), s + 4, (30, 30, 30), 2, AA)
        img = layer if alpha >= 1 else np.rint(img * (1 - alpha) + layer * alpha).astype(np.uint8)
    return img


def _shapes_flat(rng, w: int, h: int) -> np.ndarray:
    return _shapes_on(np.full((h, w, 3), 128, np.uint8), rng, 16, outline=True)


def _shapes_gradient(rng, w: int, h: int) -> np.ndarray:
    t = (np.arange(w)[None, :] / w + np.arange(h)[:, None] / h)[:, :, None] / 2  # [h, w, 1]
    bg = np.rint(np.float32(_bgr("#fde6c8")) * (1 - t) + np.float32(_bgr("#7aa2d6")) * t).astype(np.uint8)
    seed = int(rng.integers(1 << 31))  # the same shapes twice: once for their soft shadow
    drawn = _shapes_on(bg.copy(), np.random.default_rng(seed), 10, outline=False)
    shadow = cv2.GaussianBlur(np.where(drawn == bg, 0, 60).astype(np.uint8), (0, 0), 6)
    offset = np.zeros_like(shadow)
    offset[8:, 8:] = shadow[:-8, :-8]  # light from the top left
    bg = np.clip(bg.astype(np.int16) - offset, 0, 255).astype(np.uint8)
    return _shapes_on(bg, np.random.default_rng(seed), 10, outline=False)


def _shapes_clutter(rng, w: int, h: int) -> np.ndarray:
    tex = _fractal(rng, h, w, (80, 20, 5))[:, :, None]
    bg = np.rint(np.float32(_bgr("#4e5d6c")) * (0.6 + 0.8 * tex)).clip(0, 255).astype(np.uint8)
    return _finish(_shapes_on(bg, rng, 60, outline=False, alpha=0.75), rng, blur=0.6, grain=2.0)


def _noise_scales(rng, w: int, h: int) -> np.ndarray:
    """A 4x2 mosaic of coloured noise low-passed at sigma 0.7 to 48 px."""
    img = np.zeros((h, w, 3), np.float32)
    tw, th = w // 4, h // 2
    for i, sigma in enumerate((0.7, 1.5, 3, 6, 12, 24, 36, 48)):
        tile = cv2.GaussianBlur(rng.normal(0, 1, (th, tw, 3)).astype(np.float32), (0, 0), sigma)
        tile = (tile - tile.mean()) / (tile.std() + 1e-6)
        img[(i // 4) * th:(i // 4 + 1) * th, (i % 4) * tw:(i % 4 + 1) * tw] = 128 + 45 * tile
    return _finish(img, rng)


def _marble(rng, w: int, h: int) -> np.ndarray:
    turb = _fractal(rng, h, w, (128, 48, 16, 6))
    xx = np.arange(w, dtype=np.float32)[None, :]
    v = 0.5 + 0.5 * np.sin(xx / 22.0 + np.arange(h, dtype=np.float32)[:, None] / 40.0 + turb * 9.0)  # [h, w]
    v = v[:, :, None] ** 0.4
    img = np.float32(_bgr("#5a6270")) * (1 - v) + np.float32(_bgr("#f1ede6")) * v
    return _finish(img, rng, grain=1.5)


def _wood(rng, w: int, h: int) -> np.ndarray:
    turb = _fractal(rng, h, w, (160, 40, 10))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rings = np.sqrt(((yy - h * 1.8) / 1.0) ** 2 + ((xx - w * 0.3) / 7.0) ** 2) / 9.0 + turb * 6.0
    g = (rings - np.floor(rings))[:, :, None] ** 3
    grain = cv2.GaussianBlur(rng.random((h, w), dtype=np.float32), (0, 0), sigmaX=6, sigmaY=0.6)[:, :, None]
    img = np.float32(_bgr("#c8915a")) * (1 - 0.45 * g) * (0.85 + 0.3 * grain)
    return _finish(img, rng, blur=0.5, grain=1.5)


def _stripes(rng, w: int, h: int) -> np.ndarray:
    """2x2 tiles: hard and soft stripes at four angles and periods."""
    img = np.zeros((h, w, 3), np.uint8)
    yy, xx = np.mgrid[0:h // 2, 0:w // 2].astype(np.float32)
    for i, (angle, period, hard, c0, c1) in enumerate(((0, 16, True, "#101010", "#f0f0f0"),
                                                      (30, 9, False, "#1b3a6b", "#e8c547"),
                                                      (90, 5, True, "#b03030", "#f7f0e0"),
                                                      (135, 24, False, "#2e6b3a", "#d8e8d0"))):
        a = np.deg2rad(angle)
        phase = (xx * np.cos(a) + yy * np.sin(a)) / period * 2 * np.pi
        t = (np.sin(phase) > 0).astype(np.float32) if hard else 0.5 + 0.5 * np.sin(phase)
        tile = np.float32(_bgr(c0)) * (1 - t[:, :, None]) + np.float32(_bgr(c1)) * t[:, :, None]
        img[(i // 2) * (h // 2):(i // 2 + 1) * (h // 2), (i % 2) * (w // 2):(i % 2 + 1) * (w // 2)] = np.rint(tile)
    return img


def _checker(rng, w: int, h: int) -> np.ndarray:
    """A checker floor in perspective under a small flat checker and a zone plate."""
    img = _gradient(h, w, _bgr("#dddddd"), _bgr("#bbbbbb")).astype(np.uint8)
    board = np.kron((np.indices((12, 12)).sum(0) % 2), np.ones((40, 40)))[:, :, None]  # [480, 480, 1]
    board = np.uint8(np.where(board > 0, _bgr("#202020"), _bgr("#f4f4f4")))
    _paste_quad(img, board, [(w * 0.3, h * 0.45), (w * 0.7, h * 0.45), (w * 1.1, h * 1.0), (w * -0.1, h * 1.0)])
    small = np.kron((np.indices((8, 8)).sum(0) % 2), np.ones((12, 12)))[:, :, None]
    img[20:116, 20:116] = np.uint8(np.where(small > 0, _bgr("#c0392b"), _bgr("#ecf0f1")))
    yy, xx = np.mgrid[-60:60, -60:60].astype(np.float32)
    zone = np.uint8(127.5 + 127.5 * np.cos((xx ** 2 + yy ** 2) / 45.0))[:, :, None]
    img[20:140, w - 140:w - 20] = zone
    return img


# ----------------------------------------------------------------------------- documents, charts, UI


def _wrap(img, rng, x: int, y: int, width: int, n_words: int, scale: float, color, line_h: int) -> int:
    """Draw a paragraph of random words wrapped to `width`; -> the y below it."""
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), n_words)]
    words[0] = words[0].capitalize()
    line = ""
    for word in words + [None]:
        test = f"{line} {word}".strip() if word else line
        if word is None or cv2.getTextSize(test, FONT, scale, 1)[0][0] > width:
            cv2.putText(img, line + ("." if word is None else ""), (x, y), FONT, scale, color, 1, AA)
            y, line = y + line_h, word or ""
        else:
            line = test
    return y


def _table(img, rng, x: int, y: int, cols: list[str], rows: int, col_w: int, row_h: int, ink) -> int:
    cv2.rectangle(img, (x, y), (x + col_w * len(cols), y + row_h), (225, 225, 225), -1)
    for j, title in enumerate(cols):
        cv2.putText(img, title, (x + 8 + j * col_w, y + row_h - 10), FONT, 0.5, ink, 2, AA)
    for i in range(rows + 2):
        cv2.line(img, (x, y + i * row_h), (x + col_w * len(cols), y + i * row_h), (150, 150, 150), 1)
    for j in range(len(cols) + 1):
        cv2.line(img, (x + j * col_w, y), (x + j * col_w, y + (rows + 1) * row_h), (150, 150, 150), 1)
    for i in range(rows):
        cells = [WORDS[int(rng.integers(0, len(WORDS)))].capitalize()]
        cells += [f"{rng.uniform(1, 999):.1f}" for _ in cols[1:]]
        for j, cell in enumerate(cells):
            cv2.putText(img, cell, (x + 8 + j * col_w, y + (i + 2) * row_h - 10), FONT, 0.5, ink, 1, AA)
    return y + (rows + 1) * row_h


def _page(rng, w: int, h: int) -> np.ndarray:
    ink, img = (35, 30, 30), np.full((h, w, 3), (250, 251, 252), np.uint8)
    m = w // 12
    cv2.putText(img, "Quarterly Field Report", (m, m + 20), cv2.FONT_HERSHEY_DUPLEX, 1.2, ink, 2, AA)
    cv2.putText(img, "Edge vision pipeline - draft 3", (m, m + 55), FONT, 0.6, (90, 90, 90), 1, AA)
    cv2.line(img, (m, m + 72), (w - m, m + 72), (120, 120, 120), 1)
    y = m + 105
    for section in ("1. Summary", "2. Method"):
        cv2.putText(img, section, (m, y), cv2.FONT_HERSHEY_DUPLEX, 0.75, ink, 1, AA)
        y += 30
        for _ in range(2):
            y = _wrap(img, rng, m, y, w - 2 * m, int(rng.integers(35, 60)), 0.5, ink, 22) + 12
    cv2.putText(img, "Table 1. Results per site", (m, y), cv2.FONT_HERSHEY_DUPLEX, 0.6, ink, 1, AA)
    y = _table(img, rng, m, y + 12, ["Site", "Frames", "Latency ms", "Accuracy"], 6, (w - 2 * m) // 4, 30, ink) + 40
    cv2.putText(img, "3. Discussion", (m, y), cv2.FONT_HERSHEY_DUPLEX, 0.75, ink, 1, AA)
    y = _wrap(img, rng, m, y + 30, w - 2 * m, 70, 0.5, ink, 22)
    cv2.putText(img, "Page 3 of 12", (w // 2 - 50, h - m // 2), FONT, 0.45, (110, 110, 110), 1, AA)
    return img


def _document_photo(rng, w: int, h: int) -> np.ndarray:
    """The page, photographed at an angle on a wooden desk under a lamp."""
    img = _wood(rng, w, h)
    page = cv2.resize(_page(rng, 850, 1100), (612, 792), interpolation=cv2.INTER_AREA)
    _paste_quad(img, page, [(w * 0.16, h * 0.1), (w * 0.88, h * 0.06), (w * 0.95, h * 0.93), (w * 0.08, h * 0.9)])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 1.1 - 0.45 * np.sqrt(((xx - w * 0.35) / w) ** 2 + ((yy - h * 0.25) / h) ** 2)[:, :, None]
    return _finish(img * light * np.float32([0.93, 1.0, 1.06]), rng, blur=0.9, grain=3.5)


def _receipt(rng, w: int, h: int) -> np.ndarray:
    ink, img = (45, 40, 40), np.full((h, w, 3), (240, 244, 246), np.uint8)
    plain = cv2.FONT_HERSHEY_PLAIN
    cv2.putText(img, "CORNER MARKET", (w // 2 - 120, 60), cv2.FONT_HERSHEY_DUPLEX, 1.0, ink, 2, AA)
    cv2.putText(img, "12 Station Rd  tel 555 0142", (40, 95), plain, 1.2, ink, 1, AA)
    cv2.putText(img, "2024-06-11 18:42   till 3", (40, 120), plain, 1.2, ink, 1, AA)
    y, total = 170, 0.0
    for i in range(14):
        price = float(rng.uniform(0.5, 24))
        total += price
        cv2.putText(img, f"{WORDS[int(rng.integers(0, len(WORDS)))].upper():<14} x{int(rng.integers(1, 4))}", (40, y),
                    plain, 1.3, ink, 1, AA)
        cv2.putText(img, f"{price:7.2f}", (w - 130, y), plain, 1.3, ink, 1, AA)
        y += 34
    cv2.putText(img, "-" * 34, (40, y), plain, 1.3, ink, 1, AA)
    for label, v in (("SUBTOTAL", total), ("TAX 8%", total * 0.08), ("TOTAL", total * 1.08)):
        y += 36
        cv2.putText(img, label, (40, y), plain, 1.6, ink, 2 if label == "TOTAL" else 1, AA)
        cv2.putText(img, f"{v:7.2f}", (w - 150, y), plain, 1.6, ink, 2 if label == "TOTAL" else 1, AA)
    x = 60
    while x < w - 60:  # barcode
        bar = int(rng.integers(1, 5))
        cv2.rectangle(img, (x, y + 50), (x + bar - 1, y + 130), ink, -1)
        x += bar + int(rng.integers(1, 4))
    cv2.putText(img, "THANK YOU", (w // 2 - 70, y + 180), cv2.FONT_HERSHEY_DUPLEX, 0.8, ink, 1, AA)
    return img


def _axes(img, x0: int, y0: int, x1: int, y1: int, y_max: float, ticks: int, title: str, ylabel: str) -> None:
    ink = (50, 50, 50)
    for i in range(ticks + 1):
        y = int(y1 - (y1 - y0) * i / ticks)
        cv2.line(img, (x0, y), (x1, y), (225, 225, 225), 1)
        cv2.putText(img, f"{y_max * i / ticks:g}", (x0 - 45, y + 5), FONT, 0.45, ink, 1, AA)
    cv2.line(img, (x0, y0), (x0, y1), ink, 2)
    cv2.line(img, (x0, y1), (x1, y1), ink, 2)
    cv2.putText(img, title, (x0, y0 - 25), cv2.FONT_HERSHEY_DUPLEX, 0.8, ink, 1, AA)
    label = np.full((24, 200, 3), 255, np.uint8)
    cv2.putText(label, ylabel, (5, 18), FONT, 0.5, ink, 1, AA)
    rot = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)  # [200, 24, 3]
    ym = (y0 + y1) // 2 - 100
    img[ym:ym + 200, x0 - 75:x0 - 51] = np.minimum(img[ym:ym + 200, x0 - 75:x0 - 51], rot)


def _chart_bars(rng, w: int, h: int) -> np.ndarray:
    img = np.full((h, w, 3), 255, np.uint8)
    x0, y0, x1, y1 = 100, 80, w - 40, h - 80
    _axes(img, x0, y0, x1, y1, 100, 5, "Frames per second by device", "frames / s")
    months, colors = ["Jan", "Feb", "Mar", "Apr", "May", "Jun"], [_bgr("#4e79a7"), _bgr("#f28e2b")]
    gw = (x1 - x0) // len(months)
    for i, month in enumerate(months):
        for k, color in enumerate(colors):
            v = float(rng.uniform(20, 95))
            bx, top = x0 + i * gw + 14 + k * (gw - 28) // 2, int(y1 - (y1 - y0) * v / 100)
            cv2.rectangle(img, (bx, top), (bx + (gw - 28) // 2 - 4, y1 - 1), color, -1)
            cv2.putText(img, f"{v:.0f}", (bx + 2, top - 6), FONT, 0.4, (60, 60, 60), 1, AA)
        cv2.putText(img, month, (x0 + i * gw + gw // 2 - 15, y1 + 25), FONT, 0.5, (50, 50, 50), 1, AA)
    for k, name in enumerate(("edge board", "laptop")):
        cv2.rectangle(img, (x1 - 170, y0 + 10 + 24 * k), (x1 - 156, y0 + 24 + 24 * k), colors[k], -1)
        cv2.putText(img, name, (x1 - 148, y0 + 23 + 24 * k), FONT, 0.5, (50, 50, 50), 1, AA)
    return img


def _chart_lines(rng, w: int, h: int) -> np.ndarray:
    img = np.full((h, w, 3), (252, 250, 248), np.uint8)
    x0, y0, x1, y1 = 110, 80, w - 200, h - 70
    _axes(img, x0, y0, x1, y1, 40, 4, "Validation loss over training", "loss x 10")
    n = 60
    for k, (name, color) in enumerate((("baseline", "#e15759"), ("int8", "#59a14f"), ("fp16", "#4e79a7"))):
        walk = 36 - np.cumsum(rng.uniform(0, 0.9, n)) * (1 - 0.15 * k) + rng.normal(0, 0.6, n)
        xs = x0 + np.arange(n) * (x1 - x0) / (n - 1)  # [n]
        pts = np.int32(np.column_stack([xs, y1 - (y1 - y0) * np.clip(walk, 1, 40) / 40]))  # [n, 2]
        cv2.polylines(img, [pts], False, _bgr(color), 2, AA)
        cv2.line(img, (x1 + 20, y0 + 20 + 28 * k), (x1 + 50, y0 + 20 + 28 * k), _bgr(color), 3, AA)
        cv2.putText(img, name, (x1 + 58, y0 + 26 + 28 * k), FONT, 0.55, (50, 50, 50), 1, AA)
    for i in range(7):
        x = x0 + i * (x1 - x0) // 6
        cv2.putText(img, f"{i * 10}k", (x - 12, y1 + 25), FONT, 0.45, (50, 50, 50), 1, AA)
    cv2.putText(img, "step", ((x0 + x1) // 2 - 20, y1 + 55), FONT, 0.55, (50, 50, 50), 1, AA)
    return img


def _chart_pie(rng, w: int, h: int) -> np.ndarray:
    img = np.full((h, w, 3), 255, np.uint8)
    cv2.putText(img, "Share of compute", (w // 2 - 130, 50), cv2.FONT_HERSHEY_DUPLEX, 0.9, (40, 40, 40), 1, AA)
    parts = rng.dirichlet(np.ones(5) * 2)
    names = ["vision", "adapter", "prefill", "decode", "other"]
    colors = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f"]
    cx, cy, r, start = w // 2, h // 2 + 30, int(min(w, h) * 0.32), -90.0
    for frac, name, color in zip(parts, names, colors):
        end = start + 360 * frac
        cv2.ellipse(img, (cx, cy), (r, r), 0, start, end, _bgr(color), -1, AA)
        cv2.ellipse(img, (cx, cy), (r, r), 0, start, end, (255, 255, 255), 2, AA)
        mid = np.deg2rad((start + end) / 2)
        tx, ty = int(cx + (r + 40) * np.cos(mid)), int(cy + (r + 30) * np.sin(mid))
        cv2.putText(img, f"{name} {frac * 100:.0f}%", (tx - 45, ty), FONT, 0.5, (40, 40, 40), 1, AA)
        start = end
    return img


def _ui_desktop(rng, w: int, h: int) -> np.ndarray:
    img = np.full((h, w, 3), _bgr("#f3f4f6"), np.uint8)
    ink, muted, blue = _bgr("#1f2937"), _bgr("#6b7280"), _bgr("#2563eb")
    cv2.rectangle(img, (0, 0), (w, 36), _bgr("#e5e7eb"), -1)
    for i, c in enumerate(("#ef4444", "#f59e0b", "#10b981")):
        cv2.circle(img, (20 + 22 * i, 18), 7, _bgr(c), -1, AA)
    cv2.putText(img, "Engines - Flash-VL Studio", (w // 2 - 110, 24), FONT, 0.5, ink, 1, AA)
    cv2.rectangle(img, (0, 36), (230, h - 28), _bgr("#111827"), -1)
    for i, item in enumerate(("Home", "Engines", "Images", "Calibration", "Benchmarks", "Settings")):
        if i == 1:
            cv2.rectangle(img, (8, 60 + 40 * i - 24), (222, 60 + 40 * i + 10), _bgr("#374151"), -1)
        cv2.rectangle(img, (22, 60 + 40 * i - 14), (36, 60 + 40 * i), _bgr("#9ca3af"), -1)
        cv2.putText(img, item, (50, 60 + 40 * i), FONT, 0.55, (240, 240, 240), 1, AA)
    cv2.putText(img, "Engines", (260, 85), cv2.FONT_HERSHEY_DUPLEX, 0.9, ink, 1, AA)
    cv2.rectangle(img, (260, 105), (700, 140), (255, 255, 255), -1)
    cv2.rectangle(img, (260, 105), (700, 140), _bgr("#d1d5db"), 1)
    cv2.putText(img, "Search engines...", (272, 128), FONT, 0.5, muted, 1, AA)
    cv2.rectangle(img, (w - 190, 105), (w - 40, 140), blue, -1)
    cv2.putText(img, "+ New export", (w - 175, 128), FONT, 0.55, (255, 255, 255), 1, AA)
    x, y = 260, 170
    cv2.rectangle(img, (x, y), (w - 40, h - 60), (255, 255, 255), -1)
    for j, col in enumerate(("Name", "Preset", "Precision", "Size", "Updated")):
        cv2.putText(img, col, (x + 20 + j * 190, y + 30), FONT, 0.5, muted, 1, AA)
    for i in range(9):
        ry = y + 50 + i * 46
        cv2.line(img, (x, ry), (w - 40, ry), _bgr("#e5e7eb"), 1)
        cells = [f"engine-{WORDS[int(rng.integers(0, len(WORDS)))]}", "flash-vl-2b", ["fp16", "int8", "fp32"][i % 3],
                 f"{rng.uniform(0.2, 4.5):.1f} GB", f"{int(rng.integers(1, 28))} Jun"]
        for j, cell in enumerate(cells):
            cv2.putText(img, cell, (x + 20 + j * 190, ry + 30), FONT, 0.5, ink, 1, AA)
        cv2.rectangle(img, (w - 100, ry + 14), (w - 60, ry + 34), _bgr("#d1fae5" if i % 3 else "#fee2e2"), -1)
    cv2.rectangle(img, (0, h - 28), (w, h), _bgr("#e5e7eb"), -1)
    cv2.putText(img, "9 engines  |  ready", (12, h - 9), FONT, 0.45, muted, 1, AA)
    return img


def _ui_phone(rng, w: int, h: int) -> np.ndarray:
    img = np.full((h, w, 3), 255, np.uint8)
    ink, muted = _bgr("#111827"), _bgr("#6b7280")
    cv2.putText(img, "9:41", (24, 30), FONT, 0.6, ink, 2, AA)
    for i in range(4):
        cv2.rectangle(img, (w - 110 + 7 * i, 28 - 4 * i), (w - 105 + 7 * i, 30), ink, -1)
    cv2.rectangle(img, (w - 60, 16), (w - 24, 32), ink, 2)
    cv2.rectangle(img, (w - 57, 19), (w - 34, 29), ink, -1)
    cv2.putText(img, "Messages", (24, 95), cv2.FONT_HERSHEY_DUPLEX, 1.1, ink, 2, AA)
    cv2.rectangle(img, (24, 115), (w - 24, 150), _bgr("#f3f4f6"), -1)
    cv2.putText(img, "Search", (60, 139), FONT, 0.55, muted, 1, AA)
    cv2.circle(img, (42, 131), 7, muted, 2, AA)
    for i in range(7):
        y = 175 + i * 78
        cv2.circle(img, (56, y + 30), 26, _jitter(rng, _bgr("#60a5fa"), 60), -1, AA)
        name = f"{WORDS[int(rng.integers(0, len(WORDS)))].capitalize()} {chr(65 + i)}."
        cv2.putText(img, name[:2].upper(), (42, y + 37), FONT, 0.55, (255, 255, 255), 2, AA)
        cv2.putText(img, name, (96, y + 22), FONT, 0.6, ink, 2, AA)
        cv2.putText(img, _sentence(rng, 5)[:34], (96, y + 48), FONT, 0.48, muted, 1, AA)
        cv2.putText(img, f"{int(rng.integers(8, 12))}:{int(rng.integers(0, 60)):02d}", (w - 70, y + 22), FONT, 0.45,
                    muted, 1, AA)
        cv2.line(img, (96, y + 68), (w, y + 68), _bgr("#e5e7eb"), 1)
    cv2.rectangle(img, (0, h - 70), (w, h), _bgr("#f9fafb"), -1)
    cv2.line(img, (0, h - 70), (w, h - 70), _bgr("#e5e7eb"), 1)
    for i, label in enumerate(("Chats", "Calls", "Camera", "Settings")):
        cx = w * (2 * i + 1) // 8
        cv2.circle(img, (cx, h - 46), 11, _bgr("#2563eb") if i == 0 else muted, 2, AA)
        cv2.putText(img, label, (cx - 25, h - 16), FONT, 0.42, ink, 1, AA)
    return img


# ----------------------------------------------------------------------------- the set

IMAGES = {  # file name -> (width, height, draw(rng, w, h) -> BGR uint8 [h, w, 3])
    "scene_meadow.jpg": (1024, 576, _meadow),
    "scene_sunset.jpg": (640, 480, _sunset),
    "scene_village.jpg": (800, 600, _village),
    "scene_snow.jpg": (512, 512, _snow),
    "street_day.jpg": (1280, 720, _street),
    "street_night.jpg": (960, 540, lambda rng, w, h: _street(rng, w, h, night=True)),
    "lowlight_room.jpg": (640, 480, _lowlight),
    "overexposed_beach.jpg": (1024, 576, _overexposed),
    "portrait_face.jpg": (480, 640, _portrait),
    "shapes_flat.png": (512, 512, _shapes_flat),
    "shapes_gradient.png": (640, 480, _shapes_gradient),
    "shapes_clutter.jpg": (800, 800, _shapes_clutter),
    "document_page.png": (850, 1100, _page),
    "document_photo.jpg": (768, 1024, _document_photo),
    "receipt.png": (400, 1000, _receipt),
    "chart_bars.png": (800, 600, _chart_bars),
    "chart_lines.png": (1024, 576, _chart_lines),
    "chart_pie.png": (600, 600, _chart_pie),
    "texture_noise_scales.jpg": (640, 480, _noise_scales),
    "texture_marble.jpg": (512, 512, _marble),
    "texture_wood.jpg": (600, 400, _wood),
    "texture_stripes.png": (512, 512, _stripes),
    "texture_checker.png": (640, 480, _checker),
    "ui_desktop.png": (1280, 720, _ui_desktop),
    "ui_phone.png": (480, 800, _ui_phone),
}


def make_image(name: str) -> bytes:
    """One file of the set, encoded: JPEG quality 90 or PNG, by its extension."""
    if name not in IMAGES:
        raise ValueError(f"make_image: unknown image {name!r}; expected one of {sorted(IMAGES)}")
    w, h, draw = IMAGES[name]
    img = draw(_rng(name), w, h)
    assert img.shape == (h, w, 3) and img.dtype == np.uint8, (name, img.shape, img.dtype)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if name.endswith(".jpg") else [cv2.IMWRITE_PNG_COMPRESSION, 9]
    ok, buf = cv2.imencode(Path(name).suffix, img, params)
    assert ok, name
    return buf.tobytes()


def write_images(out: Path, names=None) -> list[Path]:
    """Write the named images (all by default) into `out`, creating it; -> the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names or IMAGES:
        path = out / name
        path.write_bytes(make_image(name))
        paths.append(path)
    return paths


def main(argv=None) -> int:
    ap = CliParser(prog="python -m calib.make_images", description=__doc__)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write (default: calib/images)")
    ap.add_argument("--only", action="append", choices=sorted(IMAGES), metavar="NAME",
                    help="draw only this image (repeatable)")
    args = ap.parse_args(argv)
    try:
        paths = write_images(args.out, args.only)
    except OSError as e:
        print(f"error: {e.filename or args.out}: {e.strerror or e}; check the path, its permissions and free space",
              file=sys.stderr)
        return 2
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} images ({total / 1e6:.2f} MB) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
