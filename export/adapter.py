"""Pixel-shuffle adapter: patch features -> image embeddings in the decoder's width.

[B, n_patches, width] -> pixel shuffle (space-to-depth, factor f)
-> [B, n_patches/f^2, width*f^2] -> LayerNorm -> Linear -> GELU -> Linear -> [B, image_tokens, dim].

The channel order is InternVL's `pixel_shuffle` (which Flash-VL's `mlp1` was trained
with); parameter names are those of its `nn.Sequential` (0 = LayerNorm, 1 and 3 =
Linear), so the checkpoint's `mlp1.*` tensors load as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from runtime.manifest import AdapterSpec


def pixel_shuffle(x: torch.Tensor, grid: int, factor: int) -> torch.Tensor:
    """InternVL's pixel_shuffle with scale 1/factor, on a square grid of patches."""
    b, _, c = x.shape
    g = grid // factor
    x = x.reshape(b, grid, grid, c)  # [B, W, H, C]   (InternVL's names: n, w, h, c)
    x = x.reshape(b, grid, g, c * factor)  # [B, W, H/f, C*f]
    x = x.permute(0, 2, 1, 3)  # [B, H/f, W, C*f]
    x = x.reshape(b, g, g, c * factor * factor)  # [B, H/f, W/f, C*f*f]
    x = x.permute(0, 2, 1, 3)  # [B, W/f, H/f, C*f*f]
    return x.reshape(b, g * g, c * factor * factor)  # [B, tokens, C*f*f]


class Adapter(nn.Sequential):
    def __init__(self, spec: AdapterSpec, grid: int):
        super().__init__(
            nn.LayerNorm(spec.in_dim, eps=spec.norm_eps),
            nn.Linear(spec.in_dim, spec.hidden_dim),
            nn.GELU(),
            nn.Linear(spec.hidden_dim, spec.out_dim),
        )
        self.grid = grid
        self.factor = spec.shuffle_factor

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = pixel_shuffle(features, self.grid, self.factor)  # [B, image_tokens, in_dim]
        return super().forward(x)  # [B, image_tokens, out_dim]
