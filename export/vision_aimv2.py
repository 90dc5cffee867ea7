"""AIMv2 vision tower (AIMv2-huge-patch14-448, the dynamic Flash-VL's encoder), written for ONNX export.

pixels [B, 3, T, T] (one tile) -> last hidden state after the final RMSNorm [B, n_patches, width].
Names follow transformers' `Aimv2VisionModel` (learned position embeddings, `is_native=False`),
so its state dict loads without renaming.  Pre-norm blocks: RMSNorm -> attention -> +,
RMSNorm -> SwiGLU -> +; no biases in attention or MLP.  The attention-pooling head is not
built: Flash-VL feeds the patch features to the adapter.
"""

from __future__ import annotations

import torch
from torch import nn

from export.decoder import RMSNorm, SwiGLU
from export.vision import VisionAttention
from runtime.manifest import VisionSpec


class Aimv2Embeddings(nn.Module):
    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, spec.width, spec.patch_size, stride=spec.patch_size)
        self.rms_norm = RMSNorm(spec.width, spec.norm_eps)
        self.position_embedding = nn.Embedding(spec.n_patches, spec.width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # [B, n_patches, width]
        return self.rms_norm(x) + self.position_embedding.weight  # [B, n_patches, width]


class Aimv2Block(nn.Module):
    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.rms_norm1 = RMSNorm(spec.width, spec.norm_eps)
        self.attention = VisionAttention(spec, bias=False)
        self.rms_norm2 = RMSNorm(spec.width, spec.norm_eps)
        self.ffn = SwiGLU(spec.width, spec.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.rms_norm1(x))
        return x + self.ffn(self.rms_norm2(x))


class Aimv2Encoder(nn.Module):
    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.layers = nn.ModuleList(Aimv2Block(spec) for _ in range(spec.n_layers))


class Aimv2Tower(nn.Module):
    """transformers' Aimv2VisionModel without the pooling head."""

    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.spec = spec
        self.embeddings = Aimv2Embeddings(spec)
        self.encoder = Aimv2Encoder(spec)
        self.rms_norm = RMSNorm(spec.width, spec.norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixels)  # [B, n_patches, width]
        for layer in self.encoder.layers:
            x = layer(x)
        return self.rms_norm(x)  # [B, n_patches, width]
