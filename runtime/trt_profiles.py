"""TensorRT optimization profiles, device buffer sizes and per-call bindings: pure functions.

The builder (`export.trt`) and the TensorRT backend (`runtime.trt_backend`) share these, so
the profiles an engine was built with, the buffers the runtime allocates once and the shapes
and addresses it binds on every call come from one place.  The cache layout (`kv_offset`,
`decoder_call`) is the ONNX Runtime backend's too.

    vision.plan   one profile  "vision"   pixel_values   [1..Bv, 3, S, S]
    decoder.plan  two profiles "prefill"  inputs_embeds  [1..B, 1..T, D]     position_ids [1..B, 1..T]
                               "decode"   inputs_embeds  [1..B, 1, D]        position_ids [1..B, 1]
                  both:                   past_key.i / past_value.i  [0..T-1, 1..B, Hkv, hd]

One decoder engine holds both profiles, so the weights are in memory once; the runtime makes
one execution context per profile and lets them share one activation-memory block (they never
run at the same time).  The decode profile has fixed shapes except the past length, so TensorRT
tunes its kernels for single-token steps; the prefill profile for prompt-sized ones.

The KV cache is one device buffer, [n_layers, 2, T, B, Hkv, hd] (2 = K, V): rows 0..pos-1 of a
layer's K are contiguous, so `past_key.i` is bound to the block's start with shape [pos, ...]
and `new_key.i` to row pos with shape [seq, ...]; TensorRT writes new rows in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime import graph_io as io
from runtime.errors import EngineError
from runtime.manifest import DecoderSpec, GraphSpec, ProfileShape, ProfileSpec, TensorSpec

PREFILL, DECODE = 0, 1  # profile indices of decoder.plan
KV_CACHE = "kv_cache"  # the one device buffer behind every past_* / new_* binding


# ----------------------------------------------------------------------------- profiles


def _dims(spec: TensorSpec, sizes: dict[str, int]) -> tuple[int, ...]:
    """Resolve a manifest shape (ints and names like "batch") with `sizes`."""
    try:
        return tuple(d if isinstance(d, int) else sizes[d] for d in spec.shape)
    except KeyError as e:
        raise EngineError(f"input '{spec.name}' has a dimension {e.args[0]!r} no TensorRT profile covers") from None


def _profile(name: str, inputs: tuple[TensorSpec, ...], lo: dict, opt: dict, hi: dict) -> ProfileSpec:
    return ProfileSpec(name, tuple(ProfileShape(t.name, _dims(t, lo), _dims(t, opt), _dims(t, hi)) for t in inputs))


def vision_profiles(graph: GraphSpec, max_batch: int, opt_batch: int = 1) -> tuple[ProfileSpec, ...]:
    """One profile: the batch of tiles 1..max_batch (height and width are fixed by the export)."""
    if max_batch < 1:
        raise EngineError(f"vision max batch must be at least 1, got {max_batch}")
    opt = min(max(opt_batch, 1), max_batch)
    return (_profile("vision", graph.inputs, {"batch": 1}, {"batch": opt}, {"batch": max_batch}),)


def decoder_profiles(graph: GraphSpec, max_seq_len: int, max_batch: int, opt_seq: int) -> tuple[ProfileSpec, ...]:
    """(prefill, decode): prompts of 1..T tokens and single-token steps, both after 0..T-1 cached rows."""
    if max_seq_len < 2 or max_batch < 1:
        raise EngineError(f"decoder profiles need max_seq_len >= 2 and max_batch >= 1, got {max_seq_len}, "
                          f"{max_batch}")
    t, opt_seq = max_seq_len, min(max(opt_seq, 1), max_seq_len)
    prefill = _profile("prefill", graph.inputs, {"batch": 1, "seq": 1, "past_seq": 0},
                       {"batch": 1, "seq": opt_seq, "past_seq": 0}, {"batch": max_batch, "seq": t, "past_seq": t - 1})
    decode = _profile("decode", graph.inputs, {"batch": 1, "seq": 1, "past_seq": 0},
                      {"batch": 1, "seq": 1, "past_seq": t // 2}, {"batch": max_batch, "seq": 1, "past_seq": t - 1})
    return prefill, decode


def check_shape(profile: ProfileSpec, tensor: str, shape: tuple[int, ...], plan: str) -> None:
    """Refuse a shape outside the profile the plan was built with (TensorRT would fail less clearly)."""
    p = profile.shape(tensor)
    if len(shape) != len(p.min) or any(not lo <= d <= hi for lo, d, hi in zip(p.min, shape, p.max)):
        raise EngineError(f"{plan}: '{tensor}' of shape {list(shape)} is outside the {profile.name!r} profile "
                          f"{list(p.min)}..{list(p.max)} it was built with; rebuild with larger limits, e.g. "
                          f"`python -m export.trt --engine DIR --max-seq-len N --max-batch B`")


# ----------------------------------------------------------------------------- buffers


@dataclass(frozen=True)
class Buffer:
    """A device buffer allocated once, at the largest shape any profile allows."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def profile_max(profiles: tuple[ProfileSpec, ...], tensor: str, axis: int) -> int:
    """The largest size of one axis of an input over all profiles (e.g. the batch of tiles, the context)."""
    return max(p.shape(tensor).max[axis] for p in profiles)


def vision_buffers(graph: GraphSpec, max_batch: int, image_tokens: int, dim: int) -> list[Buffer]:
    """pixel_values and image_embeds for max_batch tiles."""
    pix = graph.input(io.PIXEL_VALUES)
    s = tuple(d for d in pix.shape[1:])  # [3, S, S], fixed by the export
    return [Buffer(io.PIXEL_VALUES, pix.dtype, (max_batch,) + s),  # [Bv, 3, S, S]
            Buffer(io.IMAGE_EMBEDS, graph.output(io.IMAGE_EMBEDS).dtype, (max_batch, image_tokens, dim))]


def decoder_buffers(graph: GraphSpec, dec: DecoderSpec, max_seq_len: int, batch: int) -> list[Buffer]:
    """Inputs for a whole-context prompt, the logits, and the KV cache [L, 2, T, B, Hkv, hd]."""
    t, b = max_seq_len, batch
    return [Buffer(io.INPUTS_EMBEDS, graph.input(io.INPUTS_EMBEDS).dtype, (b, t, dec.dim)),  # [B, T, D]
            Buffer(io.POSITION_IDS, graph.input(io.POSITION_IDS).dtype, (b, t)),  # [B, T]
            Buffer(io.LOGITS, graph.output(io.LOGITS).dtype, (b, dec.vocab_size)),  # [B, V]
            Buffer(KV_CACHE, graph.input(io.past_key(0)).dtype,
                   (dec.n_layers, 2, t, b, dec.n_kv_heads, dec.head_dim))]  # [L, 2, T, B, Hkv, hd]


# ----------------------------------------------------------------------------- one decoder call


@dataclass(frozen=True)
class DecoderCall:
    """What one DecoderEngine.forward(embeds [B, S, D], pos) binds."""

    profile: int  # PREFILL | DECODE
    shapes: dict[str, tuple[int, ...]]  # input name -> shape to set
    offsets: dict[str, int]  # K/V tensor name -> byte offset into the cache buffer


def kv_offset(dec: DecoderSpec, max_seq_len: int, batch: int, itemsize: int, layer: int, kv: int, row: int) -> int:
    """Byte offset of cache[layer, kv, row] in a C-contiguous [L, 2, T, B, Hkv, hd] buffer."""
    row_bytes = batch * dec.n_kv_heads * dec.head_dim * itemsize
    return ((layer * 2 + kv) * max_seq_len + row) * row_bytes


def decoder_call(dec: DecoderSpec, max_seq_len: int, batch: int, itemsize: int, seq: int, pos: int) -> DecoderCall:
    """Profile, input shapes and cache offsets for positions pos..pos+seq-1 after pos cached rows."""
    if not (seq >= 1 and pos >= 0 and pos + seq <= max_seq_len):
        raise EngineError(f"decoder call for positions {pos}..{pos + seq - 1} does not fit the {max_seq_len}-row "
                          f"KV cache; shorten the prompt or rebuild with a larger --max-seq-len")
    kv_shape = (batch, dec.n_kv_heads, dec.head_dim)
    shapes = {io.INPUTS_EMBEDS: (batch, seq, dec.dim), io.POSITION_IDS: (batch, seq)}
    offsets = {}
    for i in range(dec.n_layers):
        for kv, (past, new) in enumerate(((io.past_key(i), io.new_key(i)), (io.past_value(i), io.new_value(i)))):
            shapes[past] = (pos,) + kv_shape  # [pos, B, Hkv, hd]
            offsets[past] = kv_offset(dec, max_seq_len, batch, itemsize, i, kv, 0)
            offsets[new] = kv_offset(dec, max_seq_len, batch, itemsize, i, kv, pos)  # rows pos..pos+seq-1
    return DecoderCall(DECODE if seq == 1 else PREFILL, shapes, offsets)


def opt_prompt_len(image_tokens: int, max_seq_len: int) -> int:
    """The prefill length TensorRT tunes for: one image and a short question in the chat template."""
    return min(image_tokens + 64, max_seq_len)
