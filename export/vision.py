"""SigLIP vision tower (SigLIP2 fixed-resolution variant), written for ONNX export.

pixels [B, 3, H, W] -> last hidden state after the post-layernorm [B, n_patches, width].
Module and parameter names follow transformers' `SiglipVisionTransformer`, so a
Hugging Face state dict loads without renaming.  Attention is spelled out with
MatMul/Softmax (no fused SDPA op) so the graph stays in standard ONNX ops that
ONNX Runtime and TensorRT 10.3+ both take.  The MAP pooling head is not built:
Flash-VL feeds the patch features, not the pooled vector, to the adapter.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from runtime.manifest import VisionSpec


class VisionEmbeddings(nn.Module):
    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, spec.width, spec.patch_size, stride=spec.patch_size)
        self.position_embedding = nn.Embedding(spec.n_patches, spec.width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels)  # [B, width, grid, grid]
        x = x.flatten(2).transpose(1, 2)  # [B, n_patches, width]
        return x + self.position_embedding.weight  # [B, n_patches, width]


class VisionAttention(nn.Module):
    """Bidirectional multi-head attention over patches: SigLIP's (with biases) and AIMv2's (without)."""

    def __init__(self, spec: VisionSpec, bias: bool = True):
        super().__init__()
        self.n_heads = spec.n_heads
        self.head_dim = spec.width // spec.n_heads
        self.q_proj = nn.Linear(spec.width, spec.width, bias=bias)
        self.k_proj = nn.Linear(spec.width, spec.width, bias=bias)
        self.v_proj = nn.Linear(spec.width, spec.width, bias=bias)
        self.out_proj = nn.Linear(spec.width, spec.width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_proj(x).view(b, t, self.n_heads, self.head_dim).permute(0, 2, 3, 1)  # [B, H, hd, T]
        v = self.v_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        scores = torch.matmul(q, k) * (1.0 / math.sqrt(self.head_dim))  # [B, H, T, T]
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v)  # [B, H, T, hd]
        out = out.transpose(1, 2).reshape(b, t, d)  # [B, T, width]
        return self.out_proj(out)


class VisionMLP(nn.Module):
    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.fc1 = nn.Linear(spec.width, spec.mlp_dim)
        self.fc2 = nn.Linear(spec.mlp_dim, spec.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # [B, T, width]


class VisionBlock(nn.Module):
    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(spec.width, eps=spec.norm_eps)
        self.self_attn = VisionAttention(spec)
        self.layer_norm2 = nn.LayerNorm(spec.width, eps=spec.norm_eps)
        self.mlp = VisionMLP(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nn.Module):
    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.layers = nn.ModuleList(VisionBlock(spec) for _ in range(spec.n_layers))


class VisionTower(nn.Module):
    """transformers' SiglipVisionTransformer without the pooling head."""

    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.spec = spec
        self.embeddings = VisionEmbeddings(spec)
        self.encoder = VisionEncoder(spec)
        self.post_layernorm = nn.LayerNorm(spec.width, eps=spec.norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixels)  # [B, n_patches, width]
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)  # [B, n_patches, width]
