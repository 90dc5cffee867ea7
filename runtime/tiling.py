"""Dynamic-resolution tiling and Implicit Semantic Stitching (ISS): pure NumPy geometry.

One module for both sides: the runtime and `export.reference` call the same functions.

    image W x H --choose_grid--> rows x cols (best aspect-ratio match, rows*cols <= max_tiles)
    canvas: the image resized to (Kx*cell, Ky*cell) pixels, Kx = n*cols - 2m(cols-1)
    tile (r, c): an n x n-cell crop at cell (r*(n-2m), c*(n-2m)) of the canvas  -> vision graph
    kept cells: tile c keeps local columns [m if c > 0 else 0, n-m if c < cols-1 else n), same for rows
    tokens: the kept cells of all tiles in raster order over the canvas (Ky x Kx), then the thumbnail's

n = cells per tile side (a cell = the pixels of one token: patch_size * shuffle factor), m = the ISS
margin.  Neighbouring tiles overlap by 2m cells, so the encoder sees m cells of context past every
seam, and each side keeps the m cells on its side: every canvas cell is kept exactly once.  m = 0
is plain dynamic cropping (no overlap, rows*cols*n*n tokens).  The thumbnail (the whole image
resized to one tile) is added when the grid has more than one tile and the manifest asks for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runtime.preprocess import preprocess, resize_pil_bicubic
from runtime.manifest import PreprocessSpec, TilingSpec


def choose_grid(width: int, height: int, max_tiles: int, tile_px: int) -> tuple[int, int]:
    """(rows, cols) whose shape is closest to the image's aspect ratio (in log space).

    Ties (e.g. 1x1 and 2x2 for a square image) go to the larger grid when the image has at
    least half the pixels of that grid, else to the smaller one.
    """
    aspect = math.log(width / height)
    best, best_key = (1, 1), None
    for rows in range(1, max_tiles + 1):
        for cols in range(1, max_tiles // rows + 1):
            miss = round(abs(aspect - math.log(cols / rows)), 12)
            enough = width * height >= 0.5 * rows * cols * tile_px * tile_px
            key = (miss, -(rows * cols) if enough else rows * cols, rows)
            if best_key is None or key < best_key:
                best, best_key = (rows, cols), key
    return best


@dataclass(frozen=True)
class TileLayout:
    rows: int
    cols: int
    margin: int  # ISS margin in cells (0: plain dynamic cropping)
    cells: int  # n, cells per tile side
    cell_px: int
    cells_x: int  # kept cells across the canvas (Kx)
    cells_y: int  # kept cells down the canvas (Ky)
    thumbnail: bool
    tile_index: np.ndarray  # [K] which tile each kept token comes from (the thumbnail is index rows*cols)
    token_index: np.ndarray  # [K] which token of that tile (raster over its n x n cells)

    @property
    def stride(self) -> int:  # cells between neighbouring tile origins
        return self.cells - 2 * self.margin

    @property
    def canvas(self) -> tuple[int, int]:  # (width, height) in pixels
        return self.cells_x * self.cell_px, self.cells_y * self.cell_px

    @property
    def n_tiles(self) -> int:  # vision-graph batch: grid tiles + thumbnail
        return self.rows * self.cols + int(self.thumbnail)

    @property
    def image_tokens(self) -> int:
        return len(self.token_index)

    @property
    def plain_tokens(self) -> int:  # what plain dynamic cropping spends on the same grid
        return (self.rows * self.cols + int(self.thumbnail)) * self.cells * self.cells

    def tile_origin(self, t: int) -> tuple[int, int]:
        """(x, y) pixel origin of grid tile t in the canvas."""
        r, c = divmod(t, self.cols)
        return c * self.stride * self.cell_px, r * self.stride * self.cell_px

    def as_dict(self) -> dict:
        return {"grid": [self.rows, self.cols], "tiles": self.n_tiles, "thumbnail": self.thumbnail,
                "iss_margin": self.margin, "image_tokens": self.image_tokens, "plain_dynamic_tokens": self.plain_tokens}


def _owners(k: int, tiles: int, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of k kept cells along one axis: the owning tile and its local cell."""
    stride = n - 2 * m
    pos = np.arange(k)  # [k]
    tile = np.clip((pos - m) // stride, 0, tiles - 1)  # [k] seams sit in the middle of each overlap
    return tile, pos - tile * stride  # [k], [k]


def plan(width: int, height: int, tiling: TilingSpec, iss: bool = True) -> TileLayout:
    """The tile grid and token layout for an image of width x height pixels."""
    if width < 1 or height < 1:
        raise ValueError(f"image must be at least 1x1 pixels, got {width}x{height}")
    n, m = tiling.cells_per_side, tiling.iss_margin if iss else 0
    rows, cols = choose_grid(width, height, tiling.max_tiles, n * tiling.cell_px)
    kx, ky = n * cols - 2 * m * (cols - 1), n * rows - 2 * m * (rows - 1)
    tile_x, local_x = _owners(kx, cols, n, m)  # [Kx]
    tile_y, local_y = _owners(ky, rows, n, m)  # [Ky]
    tile_index = (tile_y[:, None] * cols + tile_x[None, :]).ravel()  # [Ky*Kx], raster over the canvas
    token_index = (local_y[:, None] * n + local_x[None, :]).ravel()  # [Ky*Kx]
    thumbnail = tiling.thumbnail and rows * cols > 1
    if thumbnail:
        tile_index = np.concatenate([tile_index, np.full(n * n, rows * cols)])  # [K + n*n]
        token_index = np.concatenate([token_index, np.arange(n * n)])
    return TileLayout(rows=rows, cols=cols, margin=m, cells=n, cell_px=tiling.cell_px, cells_x=kx, cells_y=ky,
                      thumbnail=thumbnail, tile_index=tile_index, token_index=token_index)


def tile_pixels(rgb: np.ndarray, layout: TileLayout, pre: PreprocessSpec) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> the vision graph's batch [n_tiles, 3, S, S] (grid tiles, then thumbnail)."""
    side = layout.cells * layout.cell_px  # S
    cw, ch = layout.canvas
    canvas = resize_pil_bicubic(rgb, ch, cw)  # [Ky*cell, Kx*cell, 3]
    tiles = []
    for t in range(layout.rows * layout.cols):
        x, y = layout.tile_origin(t)
        tiles.append(preprocess(canvas[y:y + side, x:x + side], pre))  # [1, 3, S, S]
    if layout.thumbnail:
        tiles.append(preprocess(rgb, pre))  # the whole image resized to one tile
    return np.concatenate(tiles)  # [n_tiles, 3, S, S]


def gather_tokens(tile_embeds: np.ndarray, layout: TileLayout) -> np.ndarray:
    """[n_tiles, n*n, D] vision output -> [image_tokens, D] kept tokens in decoder order."""
    return tile_embeds[layout.tile_index, layout.token_index]  # [K, D]
