"""ONNX Runtime backend (CPU): the embedded default.

The decoder's KV cache is one NumPy buffer of W slots (one per sequence in flight, W <= max_batch), in
the layout the graph's manifest entry names (`kv_cache`, see runtime.graph_io):

    seq_major    cache [n_layers, 2, T, W, n_kv_heads, head_dim]   (2 = K, V; the traced graph)
    shared_bnsh  cache [n_layers, 2, W, n_kv_heads, T, head_dim]   (the fused graph's GroupQueryAttention
                 binds each layer's block as both past_* and present_*)

in the graph's K/V type (f32, or f16 for an FP16 graph; the manifest's I/O table says which).  T starts
at 512 positions and W at 1; both double as calls need them (a copy, a few times in a process's life).

The fused graph binds a slot's block [1, Hkv, T, hd] (a prefill) or the leading slots' [n, Hkv, T, hd] (a
decode step) through IOBinding; GroupQueryAttention reads each slot's past and writes its new rows in
place from per-slot `seqlens_k`, so Python copies no K/V byte.  The traced graph binds rows 0..P-1 of
every slot as its past (P the longest; each slot masks to its own length by its position) and, with one
slot, `new_*` to row pos in place; with several, new rows go to a scratch block and are copied to each
slot's own row (a few KB a step).  Logits land in a preallocated [max_batch, vocab].
Weights are pre-packed by ONNX Runtime at load (the logits Gemm too: the embedding lookup is
the runtime's, see runtime.embedding), which costs load time and buys decode speed.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime import graph_io as io
from runtime.backend import check_graph_io
from runtime.errors import Cancelled, EngineError
from runtime.manifest import DecoderSpec, GraphSpec

log = logging.getLogger(__name__)

SHARED_MIN_ROWS = 512  # the cache's first length (positions); it doubles as requests need
_ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(float16)": "float16",
              "tensor(int32)": "int32"}


def session_options(threads: int | None, spinning: bool = True, arena: bool = True) -> ort.SessionOptions:
    so = ort.SessionOptions()
    # The CPU arena keeps the largest activations a session ever ran for the life of the process; the vision
    # graph's (1024 patches through 27 layers) are freed instead: its run is seconds, the mallocs are noise.
    so.enable_cpu_mem_arena = arena
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.inter_op_num_threads = 1
    if not spinning:
        # Idle pool threads sleep instead of spinning.  A lone request decodes faster with spinning; the
        # camera loop, where a capture thread and a second session share the cores, runs faster without
        # (docs/camera-streams.md: measured).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # Standard int4 graphs (DequantizeLinear -> MatMul) are fused into MatMulNBits at load; level 4
    # lets that kernel quantize activations to int8 inside, as the onnxruntime flavour's nodes say.
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "4")
    return so


def open_session(path: Path, spec: GraphSpec, so: ort.SessionOptions) -> ort.InferenceSession:
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for every load failure
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EngineError(f"{path}: ONNX Runtime cannot load it ({first}); re-export the engine folder") from None

    def table(args):
        return [(a.name, _ORT_TYPES.get(a.type, a.type), list(a.shape)) for a in args]

    check_graph_io(path, spec, table(sess.get_inputs()), table(sess.get_outputs()))
    return sess


class Interruptible:
    """One session's RunOptions, so another thread can stop a call in flight (a full-size prefill runs for
    seconds on a CPU; Ctrl-C must not wait for it).  ONNX Runtime checks the flag between nodes."""

    def __init__(self):
        self.run_options = ort.RunOptions()

    def cancel(self) -> None:
        """Stop the call in flight, and every later call, until resume()."""
        self.run_options.terminate = True

    def resume(self) -> None:
        self.run_options = ort.RunOptions()

    def guarded(self, call):
        opts = self.run_options  # the one this call runs with, even if resume() swaps it meanwhile
        try:
            return call(opts)
        except Exception:
            if opts.terminate:
                raise Cancelled("cancelled") from None
            raise


class OrtVision(Interruptible):
    def __init__(self, path: Path, spec: GraphSpec, threads: int | None, spinning: bool = True):
        super().__init__()
        self.session = open_session(path, spec, session_options(threads, spinning, arena=False))

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        # [B, 3, H, W] f32 -> [B, image_tokens, dim] f32
        feed = {io.PIXEL_VALUES: np.ascontiguousarray(pixels, np.float32)}
        return self.guarded(lambda opts: self.session.run([io.IMAGE_EMBEDS], feed, opts))[0]


class OrtDecoder(Interruptible):
    """The decoder over a cache of `max_batch` slots (runtime.backend.DecoderEngine)."""

    def __init__(self, path: Path, spec: GraphSpec, dec: DecoderSpec, threads: int | None,
                 max_seq_len: int | None = None, max_batch: int | None = None, spinning: bool = True):
        super().__init__()
        self.session = open_session(path, spec, session_options(threads, spinning))
        self.dec = dec
        self.max_seq_len = min(max_seq_len or dec.max_seq_len, dec.max_seq_len)
        self.max_batch = min(max_batch or spec.max_batch, spec.max_batch)
        self.kv_dtype = np.dtype(spec.input(io.past_key(0)).dtype)
        self.shared = spec.kv_cache == io.SHARED_BNSH
        self.logits = np.zeros((self.max_batch, dec.vocab_size), np.float32)  # [Bmax, V]
        self.engine_seconds = 0.0  # inside session runs (see runtime.backend.DecoderEngine)
        self.cache = None
        self._bindings: dict = {}  # fused graph: ("slot", k) | ("batch", n) -> its IOBinding over the cache
        self._reserve(min(SHARED_MIN_ROWS, self.max_seq_len), 1)

    # ------------------------------------------------------------------ the cache

    def _reserve(self, rows: int, width: int) -> None:
        """A cache with room for `rows` positions in each of `width` slots; what it held is kept.

        The fused graph's GroupQueryAttention touches its whole buffer, and the traced graph's past block
        spans every slot of the width, so neither is allocated at the full context and batch up front: rows
        start at SHARED_MIN_ROWS and double when a call needs more, and so does the width (slots) when a call
        uses a slot beyond it: a copy each time, at most log2 times.  Bindings into the old buffer are dropped.
        """
        d, old = self.dec, self.cache
        row_axis, slot_axis = (4, 2) if self.shared else (2, 3)
        if old is not None:
            have_rows, have_width = old.shape[row_axis], old.shape[slot_axis]
            if rows <= have_rows and width <= have_width:
                return
            rows = min(self.max_seq_len, max(rows, 2 * have_rows)) if rows > have_rows else have_rows
            width = min(self.max_batch, max(width, 2 * have_width)) if width > have_width else have_width
        shape = [d.n_layers, 2, d.n_kv_heads, d.head_dim]  # [L,2,W,Hkv,T,hd] fused, [L,2,T,W,Hkv,hd] traced
        for axis, size in sorted(((row_axis, rows), (slot_axis, width))):
            shape.insert(axis, size)
        cache = np.zeros(shape, self.kv_dtype)
        if old is not None:
            cache[tuple(slice(0, n) for n in old.shape)] = old  # the old rows and slots, where they were
        self.cache = cache
        self._bindings.clear()

    def _check(self, what: str, last_row: int) -> None:
        if last_row >= self.max_seq_len:
            raise EngineError(f"decoder {what} reaches position {last_row}, past the {self.max_seq_len}-position "
                              f"KV cache; shorten the prompt or re-export with a larger --max-seq-len")

    # ------------------------------------------------------------------ calls

    def forward(self, inputs_embeds: np.ndarray, pos: int) -> np.ndarray:
        return self.prefill(0, inputs_embeds, pos)

    def prefill(self, slot: int, inputs_embeds: np.ndarray, pos: int) -> np.ndarray:
        # [1, S, D] at positions pos..pos+S-1 of `slot` -> logits [1, V]
        one, s, _ = inputs_embeds.shape
        assert one == 1 and 0 <= slot < self.max_batch, (inputs_embeds.shape, slot)
        self._check("prefill", pos + s - 1)
        self._reserve(pos + s, slot + 1)
        embeds = np.ascontiguousarray(inputs_embeds, np.float32)  # alive until run returns
        if self.shared:  # seqlens_k [1]: the last new row
            return self._fused(("slot", slot), embeds, np.array([pos + s - 1], np.int32), pos + s)
        return self._seq_major(embeds, np.arange(pos, pos + s, dtype=np.int64)[None, :], slot)  # positions [1, S]

    def decode(self, inputs_embeds: np.ndarray, positions: np.ndarray) -> np.ndarray:
        # [n, 1, D], one token of each of slots 0..n-1 at its own position -> logits [n, V]
        n = inputs_embeds.shape[0]
        assert inputs_embeds.shape[1] == 1 and 1 <= n <= self.max_batch and len(positions) == n, inputs_embeds.shape
        top = int(np.max(positions))
        self._check("decode step", top)
        self._reserve(top + 1, n)
        embeds = np.ascontiguousarray(inputs_embeds, np.float32)
        if self.shared:  # seqlens_k [n]: each slot's new row
            return self._fused(("batch", n), embeds, np.asarray(positions, np.int32), top + 1)
        return self._seq_major(embeds, np.asarray(positions, np.int64)[:, None], None)  # positions [n, 1]

    def _run(self, binding) -> None:
        t0 = time.perf_counter()
        self.guarded(lambda opts: self.session.run_with_iobinding(binding, opts))
        self.engine_seconds += time.perf_counter() - t0

    # ------------------------------------------------------------------ the fused graph

    def _fused(self, key, embeds: np.ndarray, seqlens_k: np.ndarray, total: int) -> np.ndarray:
        """One call of the fused graph over the slots `key` binds -> their logits [b, V]."""
        binding = self._shared_binding(key)
        total_len = np.array(total, np.int32)  # []; it and seqlens_k stay alive until the run returns
        binding.bind_cpu_input(io.SEQLENS_K, seqlens_k)
        binding.bind_cpu_input(io.TOTAL_SEQ_LEN, total_len)
        binding.bind_cpu_input(io.INPUTS_EMBEDS, embeds)
        self._run(binding)
        return self.logits[:len(seqlens_k)]

    def _shared_binding(self, key):
        """past_* and present_* = one layer's slots [k:k+1] or [0:n] of the cache [B, Hkv, T, hd], contiguous:
        GroupQueryAttention appends in place.  Built once per key until the cache moves."""
        binding = self._bindings.get(key)
        if binding is not None:
            return binding
        kind, k = key
        lo, hi = (k, k + 1) if kind == "slot" else (0, k)
        binding = self.session.io_binding()
        for i in range(self.dec.n_layers):
            for kv, (past, present) in enumerate(((io.past_key(i), io.present_key(i)),
                                                  (io.past_value(i), io.present_value(i)))):
                buf = self.cache[i, kv, lo:hi]  # [b, Hkv, T, hd], contiguous
                binding.bind_input(past, "cpu", 0, self.kv_dtype, list(buf.shape), buf.ctypes.data)
                binding.bind_output(present, "cpu", 0, self.kv_dtype, list(buf.shape), buf.ctypes.data)
        logits = self.logits[: hi - lo]  # [b, V]
        binding.bind_output(io.LOGITS, "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        self._bindings[key] = binding
        return binding

    # ------------------------------------------------------------------ the traced (standard) graph

    def _seq_major(self, embeds: np.ndarray, positions: np.ndarray, slot: int | None) -> np.ndarray:
        """One call of the traced graph.  Its past block spans the cache's whole width W (rows 0..P-1, P the
        longest past among the slots: each slot sees its own rows by its position, export.decoder); slots
        beyond the call's run along at position 0 and are not written back.  The new rows land in place when
        the width is 1 and the call writes row pos of its one slot; otherwise in a scratch block, copied to
        each slot's own rows.  A prefill of one slot in a wider cache gathers that slot's past rows first."""
        b, s, _ = embeds.shape  # b = 1 (prefill of `slot`) or n (decode of slots 0..n-1, slot None)
        d, cache = self.dec, self.cache
        width = cache.shape[3]
        prefill_wide = slot is not None and width > 1
        run_width = 1 if prefill_wide else width
        past_len = int(positions[:, 0].max())
        kv_shape = [d.n_kv_heads, d.head_dim]
        if prefill_wide:
            past = np.ascontiguousarray(cache[:, :, :past_len, slot])  # [L, 2, P, Hkv, hd]: this slot's rows
            past = past[:, :, :, None]  # [L, 2, P, 1, Hkv, hd]
        else:
            past = cache[:, :, :past_len]  # [L, 2, P, W, Hkv, hd] (rows 0..P-1 of each layer are contiguous)
            if b < width:  # the slots beyond the call: zeros at position 0
                embeds = np.concatenate([embeds, np.zeros((width - b, s, d.dim), np.float32)])  # [W, 1, D]
                positions = np.concatenate([positions, np.zeros((width - b, s), np.int64)])  # [W, 1]
        in_place = run_width == 1 and not prefill_wide
        scratch = None if in_place else np.empty((d.n_layers, 2, s, run_width, *kv_shape), self.kv_dtype)
        binding = self.session.io_binding()
        binding.bind_cpu_input(io.INPUTS_EMBEDS, embeds)
        binding.bind_cpu_input(io.POSITION_IDS, positions)
        for i in range(d.n_layers):
            for kv, (pname, nname) in enumerate(((io.past_key(i), io.new_key(i)),
                                                 (io.past_value(i), io.new_value(i)))):
                block = past[i, kv]  # [P, w, Hkv, hd]
                binding.bind_input(pname, "cpu", 0, self.kv_dtype, [past_len, run_width, *kv_shape],
                                   block.ctypes.data if past_len else cache.ctypes.data)
                new = cache[i, kv, past_len:past_len + s] if in_place else scratch[i, kv]  # [S, w, Hkv, hd]
                binding.bind_output(nname, "cpu", 0, self.kv_dtype, [s, run_width, *kv_shape], new.ctypes.data)
        logits = self.logits[:run_width]  # [w, V]
        binding.bind_output(io.LOGITS, "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        self._run(binding)
        if scratch is not None:
            if prefill_wide:  # rows pos..pos+S-1 of one slot
                cache[:, :, past_len:past_len + s, slot] = scratch[:, :, :, 0]
            else:  # one row per slot, each at its own position
                rows = positions[:b, 0]
                cache[:, :, rows, np.arange(b)] = scratch[:, :, 0, :b]  # [L, 2, b, Hkv, hd]
        return self.logits[:b]
