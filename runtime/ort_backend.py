"""ONNX Runtime backend (CPU): the embedded default.

The decoder's KV cache is one NumPy buffer allocated once, in the layout the graph's manifest
entry names (`kv_cache`, see runtime.graph_io):

    seq_major    cache [n_layers, 2, max_seq_len, batch, n_kv_heads, head_dim]   (2 = K, V)
    shared_bnsh  cache [n_layers, 2, batch, n_kv_heads, T, head_dim]   (the fused graph's GroupQueryAttention
                 binds each layer's block as both past_* and present_*; T starts at 512 and doubles up to
                 max_seq_len as requests need it)

in the graph's K/V type (f32, or f16 for an FP16 graph; the manifest's I/O table says which).

Rows 0..pos-1 of a layer's K are one contiguous block (seq-major), so each call binds
`past_key.i` to the block's start with shape [pos, ...] and `new_key.i` to row `pos`
with shape [S, ...] through IOBinding: ONNX Runtime reads the past and writes the new
rows in place, and Python copies no K/V byte.  Logits land in a preallocated [batch, vocab].
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
from runtime.trt_profiles import decoder_call

log = logging.getLogger(__name__)

SHARED_MIN_ROWS = 512  # the shared cache's first length (positions); it doubles as a request needs
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
    def __init__(self, path: Path, spec: GraphSpec, dec: DecoderSpec, threads: int | None,
                 max_seq_len: int | None = None, batch: int = 1, spinning: bool = True):
        super().__init__()
        self.session = open_session(path, spec, session_options(threads, spinning))
        self.dec = dec
        self.batch = batch
        self.max_seq_len = min(max_seq_len or dec.max_seq_len, dec.max_seq_len)
        self.kv_dtype = np.dtype(spec.input(io.past_key(0)).dtype)
        self.shared = spec.kv_cache == io.SHARED_BNSH
        self.logits = np.zeros((batch, dec.vocab_size), np.float32)  # [B, V]
        self.engine_seconds = 0.0  # inside session runs (see runtime.backend.DecoderEngine)
        if self.shared:
            self._binding = None
            self._grow(min(SHARED_MIN_ROWS, self.max_seq_len))
        else:
            self.cache = np.zeros((dec.n_layers, 2, self.max_seq_len, batch, dec.n_kv_heads, dec.head_dim),
                                  self.kv_dtype)  # [L, 2, T, B, Hkv, hd]

    def _grow(self, rows: int) -> None:
        """The shared cache with room for `rows` positions; what it held is kept.

        GroupQueryAttention's buffer length is its max_sequence_length, and its first call touches the whole
        buffer, so a buffer of the full context (235 MB at full size) would be resident from the first
        request.  It starts at SHARED_MIN_ROWS and doubles when a call needs more (a copy, at most log2 times
        a request).  Its 4 x n_layers bindings and the logits move only then: a step rebinds 3 small inputs.
        """
        d, old = self.dec, getattr(self, "cache", None)
        cache = np.zeros((d.n_layers, 2, self.batch, d.n_kv_heads, rows, d.head_dim), self.kv_dtype)  # [L,2,B,Hkv,T,hd]
        if old is not None:
            cache[..., : old.shape[4], :] = old
        self.cache = cache
        self._binding = self._bind_shared()

    def forward(self, inputs_embeds: np.ndarray, pos: int) -> np.ndarray:
        b, s, _ = inputs_embeds.shape
        assert b == self.batch, inputs_embeds.shape
        embeds = np.ascontiguousarray(inputs_embeds, np.float32)  # [B, S, D], alive until run returns
        if self.shared:
            if pos + s > self.cache.shape[4]:
                self._grow(min(self.max_seq_len, max(2 * self.cache.shape[4], pos + s)))
            binding = self._binding
            seqlens_k = np.full(b, pos + s - 1, np.int32)  # [B]: the last new row; alive until run returns
            total = np.array(pos + s, np.int32)  # []
            binding.bind_cpu_input(io.SEQLENS_K, seqlens_k)
            binding.bind_cpu_input(io.TOTAL_SEQ_LEN, total)
        else:
            binding = self.session.io_binding()
            positions = np.arange(pos, pos + s, dtype=np.int64)[None, :].repeat(b, 0)  # [B, S], alive until run
            binding.bind_cpu_input(io.POSITION_IDS, positions)
            self._bind_seq_major(binding, s, pos)
            binding.bind_output(io.LOGITS, "cpu", 0, np.float32, list(self.logits.shape), self.logits.ctypes.data)
        binding.bind_cpu_input(io.INPUTS_EMBEDS, embeds)
        t0 = time.perf_counter()
        self.guarded(lambda opts: self.session.run_with_iobinding(binding, opts))
        self.engine_seconds += time.perf_counter() - t0
        return self.logits  # [B, V]

    def _bind_seq_major(self, binding, s: int, pos: int) -> None:
        """past_* = the cache rows 0..pos-1, new_* = rows pos..pos+s-1: both in place (see module docstring)."""
        b = self.batch
        call = decoder_call(self.dec, self.max_seq_len, b, self.kv_dtype.itemsize, s, pos)  # the cache layout
        base = self.cache.ctypes.data
        new_shape = [s, b, self.dec.n_kv_heads, self.dec.head_dim]
        for i in range(self.dec.n_layers):
            for past, new in ((io.past_key(i), io.new_key(i)), (io.past_value(i), io.new_value(i))):
                binding.bind_input(past, "cpu", 0, self.kv_dtype, list(call.shapes[past]), base + call.offsets[past])
                binding.bind_output(new, "cpu", 0, self.kv_dtype, new_shape, base + call.offsets[new])

    def _bind_shared(self):
        """past_* and present_* = one layer buffer [B, Hkv, T, hd]: GroupQueryAttention appends in place."""
        binding = self.session.io_binding()
        for i in range(self.dec.n_layers):
            for kv, (past, present) in enumerate(((io.past_key(i), io.present_key(i)),
                                                  (io.past_value(i), io.present_value(i)))):
                buf = self.cache[i, kv]  # [B, Hkv, T, hd], contiguous
                binding.bind_input(past, "cpu", 0, self.kv_dtype, list(buf.shape), buf.ctypes.data)
                binding.bind_output(present, "cpu", 0, self.kv_dtype, list(buf.shape), buf.ctypes.data)
        binding.bind_output(io.LOGITS, "cpu", 0, np.float32, list(self.logits.shape), self.logits.ctypes.data)
        return binding
