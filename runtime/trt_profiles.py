"""TensorRT optimization profiles, device buffer sizes and per-call bindings: pure functions.

The builder (`export.trt`) and the TensorRT backend (`runtime.trt_backend`) share these, so
the profiles an engine was built with, the buffers the runtime allocates once and the shapes,
addresses and device copies of every call come from one place.

    vision.plan   one profile  "vision"   pixel_values   [1..Bv, 3, S, S]
    decoder.plan  two profiles "prefill"  inputs_embeds  [1, 1..T, D]        position_ids [1, 1..T]
                                          past_key.i / past_value.i  [0..T-1, 1, Hkv, hd]
                               "decode"   inputs_embeds  [1..B, 1, D]        position_ids [1..B, 1]
                                          past_key.i / past_value.i  [0..T-1, 1..B, Hkv, hd]

One decoder engine holds both profiles, so the weights are in memory once; the runtime makes
one execution context per profile and lets them share one activation-memory block (they never
run at the same time).  A prefill is one slot's prompt (or chunk), so its profile is batch 1:
a batch-B prefill profile would size that block for B x T tokens.  The decode profile has
fixed shapes except the batch and the past length, tuned for B single-token steps.

The KV cache is one device buffer, [n_layers, 2, T, B, Hkv, hd] (2 = K, V; B = slots), seq-major
like the graph: rows 0..P-1 of a layer's K for all B slots are one contiguous block.

    decode   (`decode_call`) always runs at the cache's full width B, since only then is the
             past block contiguous: past_key.i = rows 0..Pmax-1 of every slot, bound in place
             (Pmax = the largest position).  Each slot sees its own rows by the graph's mask
             (position_ids[b, 0] = its cached length).  Slots outside the call run on zeros at
             position 0 (they see nothing, and nothing of theirs is kept).  New rows land in a
             staging block [1, B, Hkv, hd] and slot i's row is copied to its row positions[i].
             Cost: every step computes B rows however few slots are busy (the weights are read
             once either way, so on a memory-bound GPU step this is the cheap part), attention
             reads Pmax rows of every slot, and each written slot costs one strided copy.
    prefill  (`prefill_call`) runs one slot at batch 1.  With B = 1 the slot's rows are the
             cache's rows: past bound in place, new rows in place (or, when a row is not
             ALIGN bytes, staged and copied back whole).  With B > 1 a slot's rows are strided
             (one [Hkv, hd] piece every B): its rows 0..pos-1 are gathered into a past block
             before the engine runs and its new rows scattered from a staging block after.
             A one-token prefill runs as a decode step writing that slot only (no gather).

Device copies are `Copy`s: `rows` pieces of `width` bytes, each side advancing by its own
pitch, i.e. cudaMemcpy2DAsync's arguments.  The backend issues each as one call (`Cuda.d2d_2d`,
or `Cuda.d2d` when `_copy` has merged its pieces into one contiguous run), so a call's copy count
is its number of `Copy`s: one per written slot in a decode step, one per (layer, K/V) block per
direction in a prefill, whatever its length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime import graph_io as io
from runtime.errors import EngineError
from runtime.manifest import DecoderSpec, GraphSpec, ProfileShape, ProfileSpec, TensorSpec

PREFILL, DECODE = 0, 1  # profile indices of decoder.plan
ALIGN = 256  # bytes: TensorRT's alignment for every I/O tensor address
KV_CACHE = "kv_cache"  # the one device buffer behind every past_* / new_* binding
KV_PAST = "kv_past"  # one slot's gathered past rows, per (layer, K/V) block (B > 1)
KV_NEW = "kv_new"  # new K/V rows before they are copied into the cache, per (layer, K/V) block
EMPTY = "kv_empty"  # distinct non-null addresses for 0-row past tensors


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
    """(prefill, decode): one slot's 1..T tokens, and steps of 1..B slots (tuned for B), after 0..T-1 rows."""
    if max_seq_len < 2 or max_batch < 1:
        raise EngineError(f"decoder profiles need max_seq_len >= 2 and max_batch >= 1, got {max_seq_len}, "
                          f"{max_batch}")
    t, b, opt_seq = max_seq_len, max_batch, min(max(opt_seq, 1), max_seq_len)
    prefill = _profile("prefill", graph.inputs, {"batch": 1, "seq": 1, "past_seq": 0},
                       {"batch": 1, "seq": opt_seq, "past_seq": 0}, {"batch": 1, "seq": t, "past_seq": t - 1})
    decode = _profile("decode", graph.inputs, {"batch": 1, "seq": 1, "past_seq": 0},
                      {"batch": b, "seq": 1, "past_seq": t // 2}, {"batch": b, "seq": 1, "past_seq": t - 1})
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


@dataclass(frozen=True)
class KvLayout:
    """Byte geometry of the cache [L, 2, T, B, Hkv, hd] and of the staging blocks beside it."""

    n_layers: int
    max_seq_len: int  # T
    batch: int  # B: slots
    slot_bytes: int  # one row of one slot, [Hkv, hd]

    @property
    def row_bytes(self) -> int:  # one row of every slot, [B, Hkv, hd]
        return self.batch * self.slot_bytes

    @property
    def in_place(self) -> bool:
        """New rows are written straight into the cache: one slot, and rows on TensorRT's alignment."""
        return self.batch == 1 and self.slot_bytes % ALIGN == 0

    @property
    def block(self) -> int:
        """Bytes per (layer, K/V) in KV_PAST / KV_NEW: T rows of one slot, or one row of B, aligned."""
        return -(-max(self.max_seq_len, self.batch) * self.slot_bytes // ALIGN) * ALIGN

    def cache(self, layer: int, kv: int, row: int, slot: int = 0) -> int:
        """Byte offset of cache[layer, kv, row, slot]."""
        return ((layer * 2 + kv) * self.max_seq_len + row) * self.row_bytes + slot * self.slot_bytes

    def staging(self, layer: int, kv: int) -> int:
        """Byte offset of a (layer, K/V) block in KV_PAST or KV_NEW."""
        return (layer * 2 + kv) * self.block


def kv_layout(dec: DecoderSpec, max_seq_len: int, batch: int, itemsize: int) -> KvLayout:
    return KvLayout(dec.n_layers, max_seq_len, batch, dec.n_kv_heads * dec.head_dim * itemsize)


def decoder_buffers(graph: GraphSpec, dec: DecoderSpec, layout: KvLayout) -> list[Buffer]:
    """Inputs for a whole-context prompt or a B-slot step, the logits, the KV cache and its staging blocks."""
    t, b, rows = layout.max_seq_len, layout.batch, max(layout.max_seq_len, layout.batch)
    bufs = [Buffer(io.INPUTS_EMBEDS, graph.input(io.INPUTS_EMBEDS).dtype, (rows, dec.dim)),  # [1*S | B*1, D]
            Buffer(io.POSITION_IDS, graph.input(io.POSITION_IDS).dtype, (rows,)),  # [1*S | B*1]
            Buffer(io.LOGITS, graph.output(io.LOGITS).dtype, (b, dec.vocab_size)),  # [B, V]
            Buffer(KV_CACHE, graph.input(io.past_key(0)).dtype,
                   (dec.n_layers, 2, t, b, dec.n_kv_heads, dec.head_dim)),  # [L, 2, T, B, Hkv, hd]
            Buffer(EMPTY, "uint8", (2 * dec.n_layers, ALIGN))]  # [2L, ALIGN]
    if b > 1:
        bufs.append(Buffer(KV_PAST, "uint8", (dec.n_layers, 2, layout.block)))  # [L, 2, block]
    if not layout.in_place:
        bufs.append(Buffer(KV_NEW, "uint8", (dec.n_layers, 2, layout.block)))  # [L, 2, block]
    return bufs


# ----------------------------------------------------------------------------- one decoder call


@dataclass(frozen=True)
class Copy:
    """A strided device copy: `rows` pieces of `width` bytes; offsets into the buffers its list names."""

    dst: int
    dst_pitch: int
    src: int
    src_pitch: int
    width: int
    rows: int


def _copy(dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, rows: int) -> Copy:
    if rows > 1 and dst_pitch == src_pitch == width:  # one contiguous run: one copy
        return Copy(dst, width * rows, src, width * rows, width * rows, 1)
    return Copy(dst, dst_pitch, src, src_pitch, width, rows)


@dataclass(frozen=True)
class StepCall:
    """What one engine run binds and copies."""

    profile: int  # PREFILL | DECODE
    batch: int  # the run's batch: 1 (prefill) or B (decode)
    seq: int
    shapes: dict[str, tuple[int, ...]]  # input name -> shape to set
    kv: dict[str, tuple[str, int]]  # past_* / new_* name -> (buffer, byte offset)
    gather: tuple[Copy, ...]  # before the run: KV_CACHE -> KV_PAST
    scatter: tuple[Copy, ...]  # after the run: KV_NEW -> KV_CACHE


def _kv_pairs(n_layers: int):
    for i in range(n_layers):
        for kv, (past, new) in enumerate(((io.past_key(i), io.new_key(i)), (io.past_value(i), io.new_value(i)))):
            yield i, kv, past, new


def decode_call(dec: DecoderSpec, layout: KvLayout, positions, write: tuple[int, ...]) -> StepCall:
    """One token for each of the B slots at positions[b] (B ints); only the slots in `write` keep their row."""
    b, t = layout.batch, layout.max_seq_len
    positions = [int(p) for p in positions]
    assert len(positions) == b and all(0 <= s < b for s in write), (positions, write)
    assert write == (0,) or not layout.in_place, write  # in place: the one slot writes its row where it is bound
    for s in write:
        if not 0 <= positions[s] < t:
            raise EngineError(f"a token of slot {s} at position {positions[s]} does not fit the {t}-row KV cache; "
                              f"end the sequence sooner, or rebuild with a larger --max-seq-len")
    pmax = max(positions)  # rows 0..pmax-1 of every slot are the past block; the mask keeps each to its own
    kv_shape = (b, dec.n_kv_heads, dec.head_dim)
    shapes = {io.INPUTS_EMBEDS: (b, 1, dec.dim), io.POSITION_IDS: (b, 1)}
    kv, scatter = {}, []
    for k, (i, j, past, new) in enumerate(_kv_pairs(dec.n_layers)):
        shapes[past] = (pmax,) + kv_shape  # [Pmax, B, Hkv, hd]
        kv[past] = (KV_CACHE, layout.cache(i, j, 0)) if pmax else (EMPTY, k * ALIGN)
        kv[new] = (KV_CACHE, layout.cache(i, j, positions[0])) if layout.in_place else (KV_NEW, layout.staging(i, j))
    if not layout.in_place:  # per written slot, its piece of the new row of every (layer, K/V) -> row positions[s]
        scatter = [_copy(layout.cache(0, 0, positions[s], s), t * layout.row_bytes, s * layout.slot_bytes,
                         layout.block, layout.slot_bytes, 2 * dec.n_layers) for s in write]
    return StepCall(DECODE, b, 1, shapes, kv, (), tuple(scatter))


def prefill_call(dec: DecoderSpec, layout: KvLayout, slot: int, seq: int, pos: int) -> StepCall:
    """Positions pos..pos+seq-1 of one slot at batch 1, after its pos cached rows."""
    t, w, strided = layout.max_seq_len, layout.slot_bytes, layout.batch > 1
    assert 0 <= slot < layout.batch, slot
    if not (seq >= 1 and pos >= 0 and pos + seq <= t):
        raise EngineError(f"decoder call for positions {pos}..{pos + seq - 1} does not fit the {t}-row KV cache; "
                          f"shorten the prompt or rebuild with a larger --max-seq-len")
    kv_shape = (1, dec.n_kv_heads, dec.head_dim)
    shapes = {io.INPUTS_EMBEDS: (1, seq, dec.dim), io.POSITION_IDS: (1, seq)}
    kv, gather, scatter = {}, [], []
    for k, (i, j, past, new) in enumerate(_kv_pairs(dec.n_layers)):
        shapes[past] = (pos,) + kv_shape  # [pos, 1, Hkv, hd]
        if pos == 0:
            kv[past] = (EMPTY, k * ALIGN)
        elif strided:  # the slot's rows 0..pos-1, one piece every row_bytes -> a contiguous block
            kv[past] = (KV_PAST, layout.staging(i, j))
            gather.append(_copy(layout.staging(i, j), w, layout.cache(i, j, 0, slot), layout.row_bytes, w, pos))
        else:
            kv[past] = (KV_CACHE, layout.cache(i, j, 0))
        if layout.in_place:
            kv[new] = (KV_CACHE, layout.cache(i, j, pos))
        else:  # [seq, 1, Hkv, hd] -> the slot's rows pos..pos+seq-1
            kv[new] = (KV_NEW, layout.staging(i, j))
            scatter.append(_copy(layout.cache(i, j, pos, slot), layout.row_bytes, layout.staging(i, j), w, w, seq))
    return StepCall(PREFILL if seq > 1 else DECODE, 1, seq, shapes, kv, tuple(gather), tuple(scatter))


def opt_prompt_len(image_tokens: int, max_seq_len: int) -> int:
    """The prefill length TensorRT tunes for: one image and a short question in the chat template."""
    return min(image_tokens + 64, max_seq_len)
