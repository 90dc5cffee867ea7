"""Qwen2 decoder, written for ONNX export: one graph serves prefill and decode.

    inputs_embeds [B,S,D] (token rows from embed_tokens, image rows spliced in: runtime.embedding)
    position_ids [B,S] --> RoPE cos/sin
    past_key.i / past_value.i [P,B,Hkv,hd] ---+
                                              v
    x --> 28 x (RMSNorm -> GQA attention -> +, RMSNorm -> SwiGLU -> +) --> RMSNorm(last row)
      --> MatMul(embed_tokens^T) --> logits [B,V]
    new_key.i / new_value.i [S,B,Hkv,hd]: K (after RoPE) and V of the S positions added.

The KV cache belongs to the runtime, seq-major (see runtime.graph_io): the graph reads
rows 0..P-1 and returns only the S new rows.  A batch may carry sequences of different lengths
(runtime.engine batches them): each sits at its own position, position_ids[b, 0], which is also how
many of the P past rows are its own; the mask follows from that (`ragged_causal_mask`), so no mask
tensor crosses the boundary.
Parameter names follow transformers' `Qwen2Model`.  The embedding lookup is not in the
graph (see runtime.graph_io for why); with tied embeddings the logits reuse
`embed_tokens.weight`, the graph's only [V,D] table.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from runtime.manifest import DecoderSpec


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables, computed in fp32 exactly as transformers' Qwen2RotaryEmbedding."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # [hd/2]
    freqs = position_ids.float()[..., None] * inv_freq  # [B, S, hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, S, hd]
    return emb.cos()[:, :, None, :], emb.sin()[:, :, None, :]  # [B, S, 1, hd]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # [B, S, H, hd]
    return x * cos + rotated * sin


def ragged_causal_mask(position_ids: torch.Tensor, past: int) -> torch.Tensor:
    """Which keys each query sees, for a batch whose sequences sit at their own positions.

    Sequence b's cached length is position_ids[b, 0] (its first new position): of the past block's `past`
    rows it sees rows 0..position_ids[b,0]-1 (rows beyond are another sequence's longer past, or nothing);
    of the S new rows, query i sees rows 0..i (causal).  With one sequence at pos = past this is the plain
    causal mask.  Built from the inputs' values in default-domain ops (TensorRT parses it).
    """
    s = position_ids.shape[1]
    start = position_ids[:, :1]  # [B, 1]: each sequence's cached length
    k_past = torch.arange(past, dtype=torch.int64)  # [P]
    past_ok = k_past[None, None, :] < start[:, :, None]  # [B, 1, P]
    past_ok = past_ok.expand(-1, s, -1)  # [B, S, P]
    q = torch.arange(s, dtype=torch.int64)  # [S]
    new_ok = (q[None, :] <= q[:, None])[None].expand(position_ids.shape[0], -1, -1)  # [B, S, S]
    return torch.cat((past_ok, new_ok), dim=-1)[:, None, None]  # [B, 1, 1, S, T], T = P + S


class Attention(nn.Module):
    def __init__(self, spec: DecoderSpec):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = spec.n_heads, spec.n_kv_heads, spec.head_dim
        self.q_proj = nn.Linear(spec.dim, spec.n_heads * spec.head_dim, bias=True)
        self.k_proj = nn.Linear(spec.dim, spec.n_kv_heads * spec.head_dim, bias=True)
        self.v_proj = nn.Linear(spec.dim, spec.n_kv_heads * spec.head_dim, bias=True)
        self.o_proj = nn.Linear(spec.n_heads * spec.head_dim, spec.dim, bias=False)

    def forward(self, x, cos, sin, mask, past_k, past_v):
        b, s, _ = x.shape
        hkv, hd, group = self.n_kv_heads, self.head_dim, self.n_heads // self.n_kv_heads
        q = apply_rope(self.q_proj(x).view(b, s, self.n_heads, hd), cos, sin)  # [B, S, H, hd]
        k = apply_rope(self.k_proj(x).view(b, s, hkv, hd), cos, sin)  # [B, S, Hkv, hd]
        v = self.v_proj(x).view(b, s, hkv, hd)  # [B, S, Hkv, hd]
        new_k = k.transpose(0, 1)  # [S, B, Hkv, hd]
        new_v = v.transpose(0, 1)  # [S, B, Hkv, hd]
        keys = torch.cat((past_k, new_k), dim=0)  # [T, B, Hkv, hd], T = P + S
        values = torch.cat((past_v, new_v), dim=0)  # [T, B, Hkv, hd]

        q = q.view(b, s, hkv, group, hd).permute(0, 2, 3, 1, 4)  # [B, Hkv, G, S, hd]
        keys = keys.permute(1, 2, 3, 0).unsqueeze(2)  # [B, Hkv, 1, hd, T]
        values = values.permute(1, 2, 0, 3).unsqueeze(2)  # [B, Hkv, 1, T, hd]
        scores = torch.matmul(q, keys) * (1.0 / math.sqrt(hd))  # [B, Hkv, G, S, T]
        scores = torch.where(mask, scores, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1)  # [B, Hkv, G, S, T]
        out = torch.matmul(probs, values)  # [B, Hkv, G, S, hd]
        out = out.permute(0, 3, 1, 2, 4).reshape(b, s, self.n_heads * hd)  # [B, S, H*hd]
        return self.o_proj(out), new_k, new_v


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases: Qwen2's MLP and AIMv2's FFN."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # [B, S, D]


class Block(nn.Module):
    def __init__(self, spec: DecoderSpec):
        super().__init__()
        self.input_layernorm = RMSNorm(spec.dim, spec.norm_eps)
        self.self_attn = Attention(spec)
        self.post_attention_layernorm = RMSNorm(spec.dim, spec.norm_eps)
        self.mlp = SwiGLU(spec.dim, spec.hidden_dim)

    def forward(self, x, cos, sin, mask, past_k, past_v):
        h, new_k, new_v = self.self_attn(self.input_layernorm(x), cos, sin, mask, past_k, past_v)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, new_k, new_v


class Decoder(nn.Module):
    """Qwen2ForCausalLM's forward, cut to what generation needs: last-token logits."""

    def __init__(self, spec: DecoderSpec):
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.dim)
        self.layers = nn.ModuleList(Block(spec) for _ in range(spec.n_layers))
        self.norm = RMSNorm(spec.dim, spec.norm_eps)
        self.lm_head = None if spec.tied_embeddings else nn.Linear(spec.dim, spec.vocab_size, bias=False)

    def forward(self, inputs_embeds, position_ids, *past):
        x = inputs_embeds  # [B, S, D]
        s, p = x.shape[1], past[0].shape[0]
        cos, sin = rope_cos_sin(position_ids, self.spec.head_dim, self.spec.rope_theta)  # [B, S, 1, hd]
        mask = ragged_causal_mask(position_ids, p)  # [B, 1, 1, S, T]

        new_kv = []
        for i, layer in enumerate(self.layers):
            x, new_k, new_v = layer(x, cos, sin, mask, past[2 * i], past[2 * i + 1])
            new_kv += [new_k, new_v]
        last = self.norm(x[:, -1, :])  # [B, D]
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight  # [V, D]
        logits = F.linear(last, weight)  # [B, V]
        return (logits, *new_kv)

    def empty_past(self, batch: int = 1) -> list[torch.Tensor]:
        shape = (0, batch, self.spec.n_kv_heads, self.spec.head_dim)
        return [torch.zeros(shape) for _ in range(2 * self.spec.n_layers)]
