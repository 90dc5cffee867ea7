"""The caption overlay (runtime.video.overlay): wrap and ASCII properties, readability on real OpenCV."""

from __future__ import annotations

import string

import cv2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from runtime.errors import FlashVLError
from runtime.video.overlay import caption_lines, draw_caption, to_ascii, wrap_lines

CAPTION = ("A person in a red jacket crosses a busy street in front of a yellow taxi "
           "while a cyclist waits at the light.")
LONG = " ".join([CAPTION] * 3)
HEADER = "#7  14:03:07"
SIZES = [(160, 120), (640, 480), (1920, 1080)]  # (W, H)


def measure7(s: str) -> int:
    return len(s) * 7


# ----------------------------------------------------------------------------- wrap_lines

words_st = st.lists(st.text(alphabet=string.ascii_letters + string.digits + ".,'-", min_size=1, max_size=40),
                    max_size=30)
space_st = st.sampled_from([" ", "  ", "\n", "\t", " \n\t "])


@st.composite
def texts(draw):
    words = draw(words_st)
    seps = [draw(space_st) for _ in words]
    return words, draw(space_st) + "".join(w + s for w, s in zip(words, seps))  # leading/trailing space too


@settings(max_examples=300, deadline=None)
@given(case=texts(), max_width=st.integers(1, 300))
def test_wrap_lines_fits_keeps_words_in_order_and_is_greedy(case, max_width):
    words, text = case
    lines = wrap_lines(text, max_width, measure7)

    for line in lines:  # fits, single-spaced, trimmed
        assert measure7(line) <= max_width or len(line) == 1, (line, max_width)
        assert line and line == line.strip() and "  " not in line and not set(line) & set("\n\t")

    # The lines' tokens, read in order, spell the words in order; a word is split only when it is too
    # wide for a line of its own, and only at the end of a line.
    tokens = [(i, tok) for i, line in enumerate(lines) for tok in line.split(" ")]
    k = 0
    for word in words:
        rest = word
        while rest:
            i, tok = tokens[k]
            assert rest.startswith(tok), (word, tok)
            if tok != rest:
                assert measure7(word) > max_width, ("split a word that fits", word, lines)
                assert tok == lines[i].split(" ")[-1], ("a word piece not at its line's end", tok, lines[i])
            rest = rest[len(tok):]
            k += 1
    assert k == len(tokens)

    # Greedy: the next line's first token did not fit at the end of this one (nor the next char of a piece).
    for a, b in zip(lines, lines[1:]):
        first = b.split(" ")[0]
        assert measure7(f"{a} {first}") > max_width or measure7(a + first[0]) > max_width, (a, b)


def test_wrap_lines_edges():
    assert wrap_lines("", 100, measure7) == []
    assert wrap_lines(" \n\t ", 100, measure7) == []
    assert wrap_lines("abcdefghij", 21, measure7) == ["abc", "def", "ghi", "j"]  # 3 chars = 21 px
    assert wrap_lines("ab cdefgh k", 28, measure7) == ["ab", "cdef", "gh k"]  # a tail shares its line
    assert wrap_lines("abc", 3, measure7) == ["a", "b", "c"]  # each char is wider than a line
    assert wrap_lines("one  two\nthree", 1000, measure7) == ["one two three"]


def test_wrap_lines_with_opencv_widths():
    def measure(s):
        return cv2.getTextSize(s, cv2.FONT_HERSHEY_DUPLEX, 0.8, 1)[0][0]

    lines = wrap_lines(LONG + " Supercalifragilisticexpialidocious" * 3, 200, measure)
    assert len(lines) > 5 and all(measure(line) <= 200 for line in lines)
    assert "".join(lines).replace(" ", "") == (LONG + " Supercalifragilisticexpialidocious" * 3).replace(" ", "")


# ----------------------------------------------------------------------------- to_ascii


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_to_ascii_always_returns_printable_ascii(text):
    assert all(" " <= c <= "~" for c in to_ascii(text))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)))
def test_to_ascii_keeps_printable_ascii(text):
    assert to_ascii(text) == text


@pytest.mark.parametrize("text, expected", [
    ("café crème", "cafe creme"),
    ("naïve Ångström São Paulo", "naive Angstrom Sao Paulo"),
    ("\u201cquoted\u201d \u2018single\u2019 it\u2019s", "\"quoted\" 'single' it's"),
    ("a \u2013 b \u2014 c\u2026", "a - b - c..."),
    ("line\nbreak\ttab\u00a0nbsp", "line break tab nbsp"),
    ("zero\u200bwidth\x07bell\x00nul", "zerowidthbellnul"),
    ("\ufb01ne \uff21\uff22 Stra\u00dfe \u00e6on", "fine AB Strasse aeon"),
    ("\u6771\u4eac \U0001F695 taxi", "?? ? taxi"),
])
def test_to_ascii_examples(text, expected):
    assert to_ascii(text) == expected


# ----------------------------------------------------------------------------- readability


def luminance(bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 [..., 3] -> WCAG relative luminance [...] in 0..1 (sRGB decoded)."""
    c = bgr.astype(np.float64) / 255
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return c[..., 2] * 0.2126 + c[..., 1] * 0.7152 + c[..., 0] * 0.0722


def backgrounds(w: int, h: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(w)
    return {"white": np.full((h, w, 3), 255, np.uint8), "black": np.zeros((h, w, 3), np.uint8),
            "noise": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)}


def band_top(w: int, h: int, text: str, header: str | None, max_lines: int = 4) -> int:
    """First row of the caption box: on a white frame the dark box changes every row it covers."""
    out = draw_caption(np.full((h, w, 3), 255, np.uint8), text, header, max_lines)
    changed = (out != 255).any(axis=(1, 2))  # [H]
    top = int(np.argmax(changed))
    assert changed[top:].all() and changed[top], "the box is not one band at the bottom"
    assert (out[top:, :2] < 128).all() and (out[top:, -2:] < 128).all(), "the box does not span the width"
    return top


def ink_rows(w: int, h: int, text: str, header: str | None, max_lines: int = 4) -> list[tuple[int, int]]:
    """Runs of rows [start, stop) holding glyphs: on black the box and outline are black, the text is not."""
    ink = cv2.cvtColor(draw_caption(np.zeros((h, w, 3), np.uint8), text, header, max_lines),
                       cv2.COLOR_BGR2GRAY) > 0  # [H, W]
    rows = np.concatenate([[False], ink.any(axis=1), [False]])
    edges = np.flatnonzero(rows[1:] != rows[:-1])
    return list(zip(edges[::2], edges[1::2]))


@pytest.mark.parametrize("w, h", SIZES)
def test_caption_is_readable_on_bright_dark_and_busy_frames(w, h):
    top = band_top(w, h, LONG, HEADER)
    assert h - top <= 0.6 * h + 1, "the box hides most of the frame"
    ref = cv2.cvtColor(draw_caption(np.zeros((h, w, 3), np.uint8), LONG, HEADER), cv2.COLOR_BGR2GRAY)  # [H, W]
    ink = ref > 0
    ys, xs = np.nonzero(ink)
    # Inside the frame and the box, not clipped at an edge: a line too wide would reach the last column.
    assert ys.min() > top and ys.max() < h - 1 and xs.min() >= 2 and xs.max() <= w - 3, (ys.min(), xs.max())

    core = ref >= 200  # glyph pixels (white text and the pale header), anti-aliased rims excluded
    near_ink = cv2.dilate(ink.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    box_bg = np.zeros_like(ink)
    box_bg[top:] = True
    box_bg &= ~near_ink  # the box where no glyph or outline is
    assert core.sum() > 200 and box_bg.sum() > 1000

    for name, frame in backgrounds(w, h).items():
        before = frame.copy()
        out = draw_caption(frame, LONG, HEADER)
        assert out.shape == frame.shape and out.dtype == np.uint8 and out is not frame
        assert np.array_equal(frame, before), "the input frame was modified"
        assert np.array_equal(out[:top], frame[:top]), f"{name}: pixels above the box changed"
        lum = luminance(out)
        text_l = np.percentile(lum[core], 10)  # dim end of the text
        bg_l = np.percentile(lum[box_bg], 90)  # bright end of the box background
        ratio = (text_l + 0.05) / (bg_l + 0.05)  # WCAG 2 contrast ratio; 4.5 is AA for body text
        assert ratio >= 4.5, f"{name} {w}x{h}: contrast {ratio:.2f} (text {text_l:.3f}, box {bg_l:.3f})"
        if name == "noise":  # the box is see-through: the scene still shows under it
            assert out[top:][box_bg[top:]].std() > 10


@pytest.mark.parametrize("w, h, min_px, max_px", [(160, 120, 6, 14), (640, 480, 10, 24), (1920, 1080, 24, 48),
                                                  (3840, 2160, 48, 96)])
def test_font_scales_with_the_frame(w, h, min_px, max_px):
    runs = ink_rows(w, h, "Hello there", None)
    assert len(runs) == 1
    assert min_px <= runs[0][1] - runs[0][0] <= max_px, runs


@pytest.mark.parametrize("w, h", SIZES)
def test_too_many_lines_are_cut_with_an_ellipsis(w, h):
    head, lines = caption_lines(LONG * 3, w, h, HEADER, max_lines=2)
    assert head == HEADER and len(lines) == 2 and lines[-1].endswith("...")
    assert to_ascii(LONG * 3).startswith(" ".join(lines)[:-3].rstrip())
    _, full = caption_lines(LONG * 3, w, h, HEADER, max_lines=100)
    assert lines[0] == full[0] and len(full) >= 2
    # What is drawn is those lines: one run of glyph rows for the header and one per line.
    assert len(ink_rows(w, h, LONG * 3, HEADER, max_lines=2)) == 1 + 2
    drawn = draw_caption(np.zeros((h, w, 3), np.uint8), LONG * 3, HEADER, max_lines=2)
    assert np.array_equal(drawn, draw_caption(np.zeros((h, w, 3), np.uint8), " ".join(lines), HEADER, 2))
    # A caption that fits keeps every word and gets no ellipsis.
    _, short = caption_lines("A cat sleeps.", w, h, HEADER, max_lines=2)
    assert short == ["A cat sleeps."]


def test_box_never_buries_a_short_frame():
    head, lines = caption_lines(LONG * 3, 640, 90, HEADER, max_lines=4)
    assert 1 <= len(lines) < 4 and lines[-1].endswith("...")
    assert 90 - band_top(640, 90, LONG * 3, HEADER) <= 0.6 * 90 + 1


def test_header_alone_and_nothing_at_all():
    frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    out = draw_caption(frame, "", None)
    assert np.array_equal(out, frame) and out is not frame and not np.shares_memory(out, frame)
    assert np.array_equal(draw_caption(frame, "  \n ", ""), frame)
    assert len(ink_rows(320, 240, "", HEADER)) == 1
    assert caption_lines("", 320, 240, HEADER) == (HEADER, [])  # the two spaces in the header are kept


def test_unicode_caption_is_drawn_as_its_ascii_fold():
    frame = np.full((240, 320, 3), 90, np.uint8)
    text = "Caf\u00e9 \u201cOl\u00e9\u201d \u2014 na\u00efve \u2026"
    assert np.array_equal(draw_caption(frame, text), draw_caption(frame, to_ascii(text)))
    assert not np.array_equal(draw_caption(frame, text), frame)


@pytest.mark.parametrize("w, h", SIZES)
def test_glyphs_have_a_dark_outline(w, h):
    top = band_top(w, h, CAPTION, HEADER)
    ink = cv2.cvtColor(draw_caption(np.zeros((h, w, 3), np.uint8), CAPTION, HEADER), cv2.COLOR_BGR2GRAY) > 0
    ring = cv2.dilate(ink.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~ink  # 1 px around
    white = cv2.cvtColor(draw_caption(np.full((h, w, 3), 255, np.uint8), CAPTION, HEADER), cv2.COLOR_BGR2GRAY)
    box = np.median(white[top:][~cv2.dilate(ink[top:].astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)])
    assert np.median(white[ring]) < box / 2, (np.median(white[ring]), box)  # on a bright scene, a dark rim


def test_same_caption_lands_on_the_same_pixels_of_any_frame():
    top = band_top(640, 480, CAPTION, HEADER)
    a = cv2.cvtColor(draw_caption(np.zeros((480, 640, 3), np.uint8), CAPTION, HEADER),
                     cv2.COLOR_BGR2GRAY)[top:].astype(int)  # [band_h, W]
    b = cv2.cvtColor(draw_caption(np.full((480, 640, 3), 255, np.uint8), CAPTION, HEADER),
                     cv2.COLOR_BGR2GRAY)[top:].astype(int)
    glyph = a >= 64
    assert glyph.sum() > 500
    assert np.abs(a - b)[glyph].max() <= 48  # glyphs look alike on both: the outline isolates them
    assert b[a == 0].max() < 128  # and nothing bright is in the box where there is no glyph


@pytest.mark.parametrize("image, needle", [
    (np.zeros((120, 160), np.uint8), "uint8 [120, 160]"),
    (np.zeros((120, 160, 4), np.uint8), "uint8 [120, 160, 4]"),
    (np.zeros((120, 160, 3), np.float32), "float32 [120, 160, 3]"),
    (np.zeros((0, 160, 3), np.uint8), "empty"),
    ("frame.png", "got str"),
])
def test_bad_frames_are_one_line_errors(image, needle):
    with pytest.raises(FlashVLError) as e:
        draw_caption(image, CAPTION)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg and "draw_caption" in msg


@pytest.mark.parametrize("max_lines", [0, -1, 2.0, True])
def test_bad_max_lines(max_lines):
    with pytest.raises(FlashVLError, match="max_lines must be an integer >= 1"):
        draw_caption(np.zeros((120, 160, 3), np.uint8), CAPTION, max_lines=max_lines)
