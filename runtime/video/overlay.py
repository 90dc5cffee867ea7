"""The caption drawn on a video frame: ASCII-folded, word-wrapped, readable on any scene.

    to_ascii(text) -> str
        what OpenCV's Hershey fonts can draw: accents folded (café -> cafe), typographic
        quotes/dashes/ellipsis -> ASCII, whitespace -> ' ', other control chars dropped,
        anything else -> '?'
    wrap_lines(text, max_width, measure) -> list[str]
        pure greedy word wrap by pixel width; every line measures <= max_width (a single
        character wider than max_width still gets a line of its own)
    caption_lines(text, width, height, header=None, max_lines=4) -> (header_line, lines)
        the lines draw_caption draws on a W x H frame; the last ends with '...' when cut
    draw_caption(image, text, header=None, max_lines=4)
        BGR uint8 [H, W, 3] -> a new BGR uint8 [H, W, 3] with the caption at the bottom:
        white text with a dark outline over a full-width, semi-transparent dark band.
        Rows above the band are left bit-exact; the input array is never written.

The layout (font scale, margins, line height) depends on the frame size only, never on
its pixels, so the same caption lands on the same pixels of every frame of a video.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Callable

import cv2
import numpy as np

from runtime.errors import FlashVLError

# ----------------------------------------------------------------------------- text

# Characters NFKD leaves alone (no decomposition) that have an obvious ASCII spelling.
_ASCII_SPELLING = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u00b4": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2039": "'", "\u203a": "'",
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "\u2026": "...", "\u2022": "*", "\u00b7": "*", "\u00d7": "x", "\u2044": "/", "\u00b0": " deg",
    "\u00df": "ss", "\u00e6": "ae", "\u00c6": "AE", "\u0153": "oe", "\u0152": "OE", "\u00f8": "o", "\u00d8": "O",
    "\u0142": "l", "\u0141": "L", "\u0111": "d", "\u0110": "D", "\u00fe": "th", "\u00de": "Th", "\u00f0": "d",
}


def to_ascii(text: str) -> str:
    """Any text -> printable ASCII only; printable ASCII comes back unchanged."""
    out = []
    for ch in unicodedata.normalize("NFKD", text):  # 'é' -> 'e' + U+0301, 'ﬁ' -> 'fi', '１' -> '1'
        if " " <= ch <= "~":
            out.append(ch)
        elif ch.isspace():  # '\n', '\t', no-break and em spaces still separate words
            out.append(" ")
        elif ch in _ASCII_SPELLING:
            out.append(_ASCII_SPELLING[ch])
        elif unicodedata.combining(ch) or unicodedata.category(ch) in ("Cc", "Cf"):
            continue  # accents, controls, zero-width joiners: nothing to draw
        else:
            out.append("?")
    return "".join(out)


def wrap_lines(text: str, max_width: int, measure: Callable[[str], int]) -> list[str]:
    """Greedy word wrap: words in order, lines measure <= max_width, over-wide words hard-broken."""
    lines: list[str] = []
    line = ""
    for word in text.split():  # collapses every run of whitespace
        joined = f"{line} {word}" if line else word
        if measure(joined) <= max_width:
            line = joined
            continue
        if line:
            lines.append(line)
        while measure(word) > max_width and len(word) > 1:
            cut = _longest_fitting_prefix(word, max_width, measure)
            lines.append(word[:cut])
            word = word[cut:]
        line = word  # the tail of a broken word may still share its line with the next word
    if line:
        lines.append(line)
    return lines


def _longest_fitting_prefix(word: str, max_width: int, measure: Callable[[str], int]) -> int:
    """Length of the longest prefix that fits (at least 1, so a too-wide char still makes progress)."""
    lo, hi = 1, len(word)  # invariant: word[:lo] fits (or lo == 1), word[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if measure(word[:mid]) <= max_width:
            lo = mid
        else:
            hi = mid
    return lo


def _ellipsize(line: str, max_width: int, measure: Callable[[str], int]) -> str:
    """`line` cut so that `line + '...'` fits, preferring a word boundary."""
    words = line.split(" ")
    while len(words) > 1 and measure(" ".join(words) + "...") > max_width:
        words.pop()
    head = " ".join(words)
    while head and measure(head + "...") > max_width:
        head = head[:-1]
    return head.rstrip() + "..."


# ----------------------------------------------------------------------------- layout

FONT = cv2.FONT_HERSHEY_DUPLEX
TEXT_BGR = (255, 255, 255)
HEADER_BGR = (215, 235, 255)  # a pale warm white: set apart from the caption, nearly as bright
OUTLINE_BGR = (0, 0, 0)
BOX_BGR = (0, 0, 0)
BOX_ALPHA = 0.7  # 30% of the scene shows through: white on it keeps WCAG contrast >= 4.5 even on white,
#                   counting the anti-aliased edges of 7 px glyphs
MIN_SCALE = 0.35  # smaller Hershey glyphs are unreadable (~7 px capitals, 160x120 frames)
HEADER_RATIO = 0.72  # header font relative to the caption's
MAX_BAND = 0.6  # the band never hides more than this share of the frame height


class _Style:
    """Pixel metrics of one font size (a pure function of the scale)."""

    def __init__(self, scale: float):
        self.scale = scale
        # Hershey strokes (OpenCV 4) need ~2 px per unit of scale to stay legible when scaled up;
        # OpenCV 5's TTF rendering turns any thickness > 1 into the bold weight.
        self.thickness = max(1, round(scale * 2.0))
        self.rim = max(2, round(scale * 1.5))  # outline px around every stroke (1 px fades into the AA edge)
        (_, cap_h), base = cv2.getTextSize("Ag", FONT, scale, self.thickness)
        self.ascent = cap_h + self.rim  # baseline to the top of the outlined capitals
        self.line_h = round((cap_h + base) * 1.2) + self.rim  # outlines of adjacent lines may touch

    def width(self, s: str) -> int:
        return cv2.getTextSize(s, FONT, self.scale, self.thickness)[0][0] + 2 * self.rim


@lru_cache(maxsize=16)
def _layout(width: int, height: int) -> tuple[_Style, _Style, int]:
    """Frame size -> (caption style, header style, margin px)."""
    # Subtitle-sized on landscape frames (capitals ~3% of the height); narrow frames limit by width.
    scale = max(MIN_SCALE, min(height / 780, width / 1100))
    margin = max(3, round(min(width, height) * 0.025))
    return _Style(scale), _Style(max(MIN_SCALE, scale * HEADER_RATIO)), margin


def _check_image(image) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = (f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray)
               else type(image).__qualname__)
        raise FlashVLError(f"draw_caption: expected a BGR uint8 [H, W, 3] frame, got {got}; "
                           f"convert with cv2.cvtColor(img, cv2.COLOR_GRAY2BGR / COLOR_BGRA2BGR) first")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise FlashVLError(f"draw_caption: the frame is empty ({list(image.shape)}); pass a decoded frame")


def _check_max_lines(max_lines) -> None:
    if isinstance(max_lines, bool) or not isinstance(max_lines, int) or max_lines < 1:
        raise FlashVLError(f"caption: max_lines must be an integer >= 1, got {max_lines!r}; pass 1 or more")


# ----------------------------------------------------------------------------- drawing


def caption_lines(text: str, width: int, height: int, header: str | None = None,
                  max_lines: int = 4) -> tuple[str, list[str]]:
    """The header line ('' for none) and caption lines exactly as draw_caption draws them on a W x H frame."""
    _check_max_lines(max_lines)
    style, hstyle, margin = _layout(width, height)
    text_w = max(1, width - 2 * margin)
    lines = wrap_lines(to_ascii(text or ""), text_w, style.width)
    head = to_ascii(header or "").strip()  # inner spacing kept: '#12  14:03:07' is laid out on purpose
    if head and hstyle.width(head) > text_w:
        head = _ellipsize(head, text_w, hstyle.width)
    # Caption lines give way to the header, then to the frame height, so the band never buries the scene.
    room = int(height * MAX_BAND) - 2 * margin - (hstyle.line_h if head else 0)
    keep = max(1, min(max_lines, room // style.line_h))
    if len(lines) > keep:
        lines = lines[:keep - 1] + [_ellipsize(lines[keep - 1], text_w, style.width)]
    return head, lines


def draw_caption(image: np.ndarray, text: str, header: str | None = None, max_lines: int = 4) -> np.ndarray:
    """BGR uint8 [H, W, 3] -> a new BGR uint8 [H, W, 3] with `header` and `text` drawn at the bottom."""
    _check_image(image)
    _check_max_lines(max_lines)
    out = image.copy()  # [H, W, 3]
    overlay = _overlay(image.shape[1], image.shape[0], text or "", header or "", max_lines)
    if overlay is None:
        return out
    keep, paint = overlay  # [band_h, W, 3] uint8 each
    band = out[out.shape[0] - keep.shape[0]:]  # a view: only these bottom rows change
    cv2.multiply(band, keep, dst=band, scale=1 / 255)  # what is left of the scene
    cv2.add(band, paint, dst=band)  # plus box, outline and text, premultiplied
    return out


@lru_cache(maxsize=4)  # one caption at a time; a 4K entry is ~12 MB
def _overlay(width: int, height: int, text: str, header: str, max_lines: int):
    """Frame size and caption -> (keep, paint), both [band_h, W, 3] uint8, or None when nothing is drawn.

    The band is `band * keep / 255 + paint`: box, outline and text composited once, premultiplied, so a
    video that shows one caption for many frames pays two saturating uint8 ops per frame (cached here).
    """
    head, lines = caption_lines(text, width, height, header, max_lines)
    if not lines and not head:
        return None
    style, hstyle, margin = _layout(width, height)
    head_h = hstyle.line_h if head else 0
    band_h = min(height, 2 * margin + head_h + len(lines) * style.line_h)

    # Glyph coverage is drawn on its own and the outline is its dilation: the same result on every
    # OpenCV (4.x strokes Hershey glyphs; 5.x renders them from a TTF, where a thicker putText means a
    # bolder weight, not a wider stroke, so a thick dark putText underneath is no outline there).
    caption_ink = np.zeros((band_h, width), np.uint8)  # [band_h, W] coverage 0..255
    header_ink = np.zeros_like(caption_ink)
    y = margin
    if head:
        _ink(header_ink, head, margin, y + hstyle.ascent, hstyle)
        y += head_h
    for line in lines:
        _ink(caption_ink, line, margin, y + style.ascent, style)
        y += style.line_h
    rim = 2 * max(style.rim, hstyle.rim if head else 0) + 1
    outline = cv2.dilate(np.maximum(caption_ink, header_ink),
                         cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (rim, rim)))

    # "Over" composited front to back: caption, header, outline, box.  A layer of coverage a lets
    # `rest * (1 - a)` of what lies under it through and adds `rest * a` of its colour.
    rest = np.ones((band_h, width), np.float32)  # [band_h, W]
    weights = []
    for a in (caption_ink / np.float32(255), header_ink / np.float32(255), outline / np.float32(255),
              np.float32(BOX_ALPHA)):
        weights.append(rest * a)  # [band_h, W]
        rest = rest * (1 - a)
    colours = np.array([TEXT_BGR, HEADER_BGR, OUTLINE_BGR, BOX_BGR], np.float32)  # [4, 3]
    paint = np.stack(weights, axis=-1) @ colours  # [band_h, W, 4] @ [4, 3] -> [band_h, W, 3]
    keep = rest[..., None]  # [band_h, W, 1], the scene's share
    keep8 = np.repeat(np.rint(keep * 255).astype(np.uint8), 3, axis=2)  # [band_h, W, 3]
    paint8 = np.rint(paint).astype(np.uint8)  # [band_h, W, 3]
    keep8.flags.writeable = paint8.flags.writeable = False  # shared by every frame with this caption
    return keep8, paint8


def _ink(mask: np.ndarray, s: str, x: int, y: int, style: _Style) -> None:
    """Draw `s` as coverage 0..255 into `mask`, its baseline at y, its outline's left edge at x."""
    cv2.putText(mask, s, (x + style.rim, y), FONT, style.scale, 255, style.thickness, cv2.LINE_AA)
