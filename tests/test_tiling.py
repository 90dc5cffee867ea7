"""Tiling and ISS geometry (runtime.tiling): properties over random image sizes and tilings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from runtime.manifest import PreprocessSpec, TilingSpec
from runtime.tiling import choose_grid, gather_tokens, plan, tile_pixels


@st.composite
def tilings(draw):
    n = draw(st.integers(2, 16))
    return TilingSpec(max_tiles=draw(st.integers(1, 9)), thumbnail=draw(st.booleans()),
                      iss_margin=draw(st.integers(0, (n - 1) // 2)), cell_px=draw(st.sampled_from([1, 2, 14, 28])),
                      cells_per_side=n, order="raster_then_thumbnail")


sizes = st.one_of(st.integers(1, 4000), st.sampled_from([1, 2, 2000]))


def canvas_cells(layout):
    """The canvas cell (Y, X) each kept grid token covers, from the crop geometry alone."""
    grid = layout.tile_index < layout.rows * layout.cols
    cells = []
    for t, k in zip(layout.tile_index[grid], layout.token_index[grid]):
        x0, y0 = layout.tile_origin(int(t))
        ly, lx = divmod(int(k), layout.cells)
        cells.append((y0 // layout.cell_px + ly, x0 // layout.cell_px + lx))
    return cells


@settings(max_examples=300, deadline=None)
@given(w=sizes, h=sizes, tiling=tilings(), iss=st.booleans())
def test_kept_tokens_cover_the_canvas_once_in_raster_order(w, h, tiling, iss):
    layout = plan(w, h, tiling, iss=iss)
    n, m = tiling.cells_per_side, layout.margin
    assert m == (tiling.iss_margin if iss else 0)
    assert 1 <= layout.rows * layout.cols <= tiling.max_tiles
    # every canvas cell is kept exactly once, and the order is raster over the whole canvas
    cells = canvas_cells(layout)
    assert [y * layout.cells_x + x for y, x in cells] == list(range(layout.cells_x * layout.cells_y))
    # no (tile, token) pair is used twice
    pairs = set(zip(layout.tile_index.tolist(), layout.token_index.tolist()))
    assert len(pairs) == layout.image_tokens
    # token-count formulas
    kx, ky = n * layout.cols - 2 * m * (layout.cols - 1), n * layout.rows - 2 * m * (layout.rows - 1)
    thumb = n * n if layout.thumbnail else 0
    assert layout.image_tokens == kx * ky + thumb
    assert layout.plain_tokens == layout.rows * layout.cols * n * n + thumb >= layout.image_tokens
    assert layout.thumbnail == (tiling.thumbnail and layout.rows * layout.cols > 1)
    # every tile crop lies inside the canvas
    cw, ch = layout.canvas
    side = n * tiling.cell_px
    for t in range(layout.rows * layout.cols):
        x0, y0 = layout.tile_origin(t)
        assert 0 <= x0 and x0 + side <= cw and 0 <= y0 and y0 + side <= ch


@settings(max_examples=200, deadline=None)
@given(w=sizes, h=sizes, tiling=tilings())
def test_every_kept_token_sees_the_margin_past_each_inner_seam(w, h, tiling):
    layout = plan(w, h, tiling, iss=True)
    n, m = layout.cells, layout.margin
    grid = layout.tile_index < layout.rows * layout.cols
    for t, k in zip(layout.tile_index[grid], layout.token_index[grid]):
        r, c = divmod(int(t), layout.cols)
        ly, lx = divmod(int(k), n)
        assert (c == 0 or lx >= m) and (c == layout.cols - 1 or lx < n - m)
        assert (r == 0 or ly >= m) and (r == layout.rows - 1 or ly < n - m)


@settings(max_examples=200, deadline=None)
@given(w=sizes, h=sizes, max_tiles=st.integers(1, 12))
def test_grid_is_the_closest_aspect_ratio(w, h, max_tiles):
    rows, cols = choose_grid(w, h, max_tiles, tile_px=448)
    miss = abs(math.log(w / h) - math.log(cols / rows))
    for r in range(1, max_tiles + 1):
        for c in range(1, max_tiles // r + 1):
            assert miss <= abs(math.log(w / h) - math.log(c / r)) + 1e-9


def test_grid_examples():
    assert choose_grid(1, 2000, 4, 448) == (4, 1)
    assert choose_grid(2000, 1, 4, 448) == (1, 4)
    assert choose_grid(1, 1, 4, 448) == (1, 1)
    assert choose_grid(1920, 1080, 4, 448) == (1, 2)
    assert choose_grid(1000, 1000, 4, 448) == (2, 2)  # enough pixels for 2x2
    assert choose_grid(300, 300, 4, 448) == (1, 1)  # not enough: one tile


def test_real_preset_counts():
    t = TilingSpec(max_tiles=4, thumbnail=True, iss_margin=2, cell_px=28, cells_per_side=16,
                   order="raster_then_thumbnail")
    square = plan(1000, 1000, t)
    assert (square.rows, square.cols, square.image_tokens, square.plain_tokens) == (2, 2, 28 * 28 + 256, 5 * 256)
    assert square.canvas == (28 * 28, 28 * 28)
    wide = plan(1920, 1080, t)
    assert (wide.rows, wide.cols, wide.image_tokens, wide.plain_tokens) == (1, 2, 16 * 28 + 256, 3 * 256)
    assert plan(1000, 1000, t, iss=False).image_tokens == 5 * 256


def test_gather_picks_the_right_rows():
    t = TilingSpec(max_tiles=4, thumbnail=True, iss_margin=1, cell_px=2, cells_per_side=4,
                   order="raster_then_thumbnail")
    layout = plan(40, 20, t)  # 1 x 2 grid + thumbnail
    embeds = np.zeros((layout.n_tiles, 16, 2), np.float32)
    embeds[:, :, 0] = np.arange(layout.n_tiles)[:, None]  # feature 0 = tile, feature 1 = token
    embeds[:, :, 1] = np.arange(16)[None, :]
    got = gather_tokens(embeds, layout)
    assert got.shape == (layout.image_tokens, 2)
    np.testing.assert_array_equal(got[:, 0], layout.tile_index)
    np.testing.assert_array_equal(got[:, 1], layout.token_index)
    # first canvas row: tile 0 keeps local cols 0..2, tile 1 keeps local cols 1..3 (stride 2)
    assert got[:6].tolist() == [[0, 0], [0, 1], [0, 2], [1, 1], [1, 2], [1, 3]]


@pytest.mark.parametrize("w,h", [(1, 2000), (2000, 1), (1, 1), (37, 23)])
def test_tile_pixels_for_extreme_images(w, h):
    t = TilingSpec(max_tiles=4, thumbnail=True, iss_margin=1, cell_px=7, cells_per_side=4,
                   order="raster_then_thumbnail")
    pre = PreprocessSpec(height=28, width=28, resample="pil_bicubic", rescale=1 / 255, mean=(0.5,) * 3,
                         std=(0.5,) * 3, alpha_background=(255, 255, 255))
    rgb = np.random.default_rng(w * h).integers(0, 255, (h, w, 3), dtype=np.uint8)
    layout = plan(w, h, t)
    pixels = tile_pixels(rgb, layout, pre)
    assert pixels.shape == (layout.n_tiles, 3, 28, 28) and pixels.dtype == np.float32
    assert np.isfinite(pixels).all() and pixels.min() >= -1 and pixels.max() <= 1


def test_tile_crops_are_cut_from_one_resized_canvas():
    """Overlapping tiles see the same canvas pixels in their overlap (the encoder's shared context)."""
    t = TilingSpec(max_tiles=4, thumbnail=False, iss_margin=1, cell_px=7, cells_per_side=4,
                   order="raster_then_thumbnail")
    pre = PreprocessSpec(height=28, width=28, resample="pil_bicubic", rescale=1 / 255, mean=(0.5,) * 3,
                         std=(0.5,) * 3, alpha_background=(255, 255, 255))
    rgb = np.random.default_rng(1).integers(0, 255, (50, 100, 3), dtype=np.uint8)
    layout = plan(100, 50, t)
    assert (layout.rows, layout.cols) == (1, 2)
    pixels = tile_pixels(rgb, layout, pre)
    overlap = 2 * layout.margin * layout.cell_px  # 14 px
    np.testing.assert_array_equal(pixels[0, :, :, -overlap:], pixels[1, :, :, :overlap])
