"""TensorRT backend: the VisionEngine / DecoderEngine interface over vision.plan and decoder.plan.

Memory, all allocated once at load (runtime.trt_profiles says the shapes):

    device  pixel_values [Bv,3,S,S]  image_embeds [Bv,N,D]           vision I/O
            inputs_embeds [B,T,D]  position_ids [B,T]  logits [B,V]  decoder I/O
            kv_cache [L,2,T,B,Hkv,hd]                                 stays on the device
            one activation block per engine (the decoder's two contexts share theirs)
    pinned  the same I/O shapes on the host, the only staging the calls copy through

One decoder call: write the embeddings and positions into pinned memory, then on one stream
copy them in, bind `past_*` to the cache's first row and `new_*` to row pos (no K/V byte
crosses to the host, ever), enqueue, copy back only the logits, synchronize.  Single-token
steps run on the "decode" profile; a step's shapes and addresses depend only on pos, so the
first visit to a position runs it on a context of its own (sharing the activation block) and
then captures the whole step (copies in, engine, logits out) in a CUDA graph; later visits, in
any request, replay it with one launch.  That context is never re-bound: TensorRT's rule is one
execution context per captured graph.  Addresses are 256-byte aligned (TensorRT's rule); a
0-row past tensor gets its own non-null address; a model whose cache row is not a multiple of
256 bytes writes new K/V rows to a staging block and copies them into the cache on the device.

Everything TensorRT-specific goes through runtime.trt_compat; memory through runtime.cuda_mem.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from runtime import cuda_mem
from runtime import graph_io as io
from runtime import trt_compat
from runtime.backend import check_graph_io
from runtime.errors import EngineError
from runtime.manifest import DecoderSpec, GraphSpec, Manifest, PlanSpec
from runtime.trt_profiles import (DECODE, KV_CACHE, PREFILL, check_shape, decoder_buffers, decoder_call, kv_offset,
                                  profile_max, vision_buffers)

log = logging.getLogger(__name__)

ALIGN = 256  # bytes: TensorRT's alignment for every I/O tensor address
KV_STAGING = "kv_staging"  # new K/V rows when a cache row is not ALIGN-aligned (small models)
MAX_GRAPHS = 256  # decode positions with a captured CUDA graph (each keeps an execution context: host memory)


# ----------------------------------------------------------------------------- engines


def load_engine(trt, trt_runtime, path: Path, graph: GraphSpec, plan: PlanSpec):
    """Deserialize a plan and check its I/O and profiles against the manifest."""
    engine = trt_runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise EngineError(f"{path}: TensorRT cannot deserialize it (see its log above); rebuild the plans on this "
                          f"machine with `python -m export.trt --engine {path.parent}`")
    got = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        kind = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        try:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
        except TypeError:  # bf16, fp8, int4 I/O: none of our graphs has them
            raise EngineError(f"{path}: I/O tensor '{name}' is {engine.get_tensor_dtype(name)}, which the runtime does "
                              f"not feed; rebuild the plans from this folder's graphs") from None
        got[name] = (kind, dtype, [d if d >= 0 else "dynamic" for d in engine.get_tensor_shape(name)])
    want = [t.name for t in graph.inputs + graph.outputs]
    if sorted(got) != sorted(want):
        raise EngineError(f"{path}: the plan's I/O tensors {sorted(got)[:6]}... are not the graph's "
                          f"{sorted(want)[:6]}... in manifest.json; the plan was built from another export, rebuild "
                          f"it with `python -m export.trt --engine {path.parent}`")
    # TensorRT lists I/O tensors in its own order: compare them in the manifest's
    table = {k: [(t.name, got[t.name][1], got[t.name][2]) for t in specs if got[t.name][0] == k]
             for k, specs in (("input", graph.inputs), ("output", graph.outputs))}
    check_graph_io(path, graph, table["input"], table["output"])
    if engine.num_optimization_profiles != len(plan.profiles):
        raise EngineError(f"{path}: {engine.num_optimization_profiles} optimization profiles, manifest.json lists "
                          f"{len(plan.profiles)}; rebuild with `python -m export.trt --engine {path.parent}`")
    for index, profile in enumerate(plan.profiles):
        for s in profile.shapes:
            got_shape = tuple(tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(s.tensor, index))
            if got_shape != (s.min, s.opt, s.max):
                raise EngineError(f"{path}: profile {profile.name!r} of '{s.tensor}' is {got_shape}, manifest.json "
                                  f"says {(s.min, s.opt, s.max)}; rebuild with `python -m export.trt --engine "
                                  f"{path.parent}`")
    return engine


class _Context:
    """One execution context on one profile, with its binding checks."""

    def __init__(self, trt, engine, plan_path: Path, profile_index: int, profile, scratch, scratch_bytes, stream):
        self.plan_path = plan_path
        self.profile = profile
        self.context = trt_compat.user_managed_context(trt, engine)
        trt_compat.set_device_memory(self.context, scratch.ptr, scratch_bytes)
        try:  # TensorRT raises RuntimeError here instead of returning False
            self.context.set_optimization_profile_async(profile_index, stream.handle)
        except RuntimeError as e:
            raise EngineError(f"{plan_path}: TensorRT refused optimization profile {profile_index} "
                              f"({profile.name}): {e}; rebuild the plans") from None

    def set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        check_shape(self.profile, name, shape, str(self.plan_path))
        if not self.context.set_input_shape(name, shape):
            raise EngineError(f"{self.plan_path}: TensorRT refused shape {list(shape)} for '{name}' "
                              f"(profile {self.profile.name!r}); rebuild the plans")

    def set_address(self, name: str, ptr: int) -> None:
        if not self.context.set_tensor_address(name, ptr):
            raise EngineError(f"{self.plan_path}: TensorRT refused the address of '{name}'")

    def execute(self, stream) -> None:
        if not self.context.execute_async_v3(stream.handle):
            raise EngineError(f"{self.plan_path}: TensorRT failed to run the {self.profile.name!r} profile (see its "
                              f"log above); `python -m export.trt check --engine {self.plan_path.parent}` tells a "
                              f"miscompiled plan from a bad export")


# ----------------------------------------------------------------------------- vision


class TrtVision:
    def __init__(self, trt, trt_runtime, cuda, stream, engine_dir: Path, graph: GraphSpec, plan: PlanSpec,
                 image_tokens: int, dim: int):
        self.cuda, self.stream = cuda, stream
        path = engine_dir / plan.file
        self.engine = load_engine(trt, trt_runtime, path, graph, plan)
        self.max_batch = profile_max(plan.profiles, io.PIXEL_VALUES, 0)
        scratch_bytes = trt_compat.device_memory_size(self.engine)
        self.scratch = cuda.malloc(scratch_bytes)
        self.context = _Context(trt, self.engine, path, 0, plan.profiles[0], self.scratch, scratch_bytes, stream)
        bufs = vision_buffers(graph, self.max_batch, image_tokens, dim)
        self.dev = {b.name: cuda.malloc(b.nbytes) for b in bufs}
        self.host = {b.name: cuda.pinned(b.shape, b.dtype) for b in bufs}  # [Bv,3,S,S], [Bv,N,D]
        for name, buf in self.dev.items():
            self.context.set_address(name, buf.ptr)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        # [tiles, 3, S, S] f32 -> [tiles, N, D] f32, max_batch tiles per run
        pix, emb = self.host[io.PIXEL_VALUES], self.host[io.IMAGE_EMBEDS]
        out = np.empty((len(pixels),) + emb.shape[1:], np.float32)  # [tiles, N, D]
        for start in range(0, len(pixels), self.max_batch):
            n = min(self.max_batch, len(pixels) - start)
            pix[:n] = pixels[start:start + n]
            self.context.set_shape(io.PIXEL_VALUES, (n,) + pix.shape[1:])
            self.cuda.h2d(self.dev[io.PIXEL_VALUES].ptr, pix[:n], self.stream)
            self.context.execute(self.stream)
            self.cuda.d2h(emb[:n], self.dev[io.IMAGE_EMBEDS].ptr, self.stream)
            self.cuda.synchronize(self.stream)
            out[start:start + n] = emb[:n]
        return out


# ----------------------------------------------------------------------------- decoder


class TrtDecoder:
    def __init__(self, trt, trt_runtime, cuda, stream, engine_dir: Path, graph: GraphSpec, plan: PlanSpec,
                 dec: DecoderSpec, max_seq_len: int | None = None, batch: int = 1, cuda_graphs: bool = True):
        self.trt, self.cuda, self.stream, self.dec, self.batch = trt, cuda, stream, dec, batch
        self.path, self.plan = engine_dir / plan.file, plan
        self.engine = load_engine(trt, trt_runtime, self.path, graph, plan)
        built = profile_max(plan.profiles, io.INPUTS_EMBEDS, 1)
        self.max_seq_len = min(max_seq_len or built, built)
        check_shape(plan.profiles[PREFILL], io.INPUTS_EMBEDS, (batch, 1, dec.dim), str(self.path))
        self.itemsize = np.dtype(graph.input(io.past_key(0)).dtype).itemsize
        self.row_bytes = batch * dec.n_kv_heads * dec.head_dim * self.itemsize  # one cache row [B, Hkv, hd]
        # TensorRT wants 256-byte aligned addresses: when a row is not a multiple of that, new K/V rows
        # go to the start of a staging block and are copied to row pos on the device
        self.staged = self.row_bytes % ALIGN != 0
        if (self.max_seq_len * self.row_bytes) % ALIGN:
            raise EngineError(f"{self.path}: a KV block of {self.max_seq_len} rows x {self.row_bytes} bytes is not "
                              f"{ALIGN}-byte aligned; use an even --max-seq-len")
        # every context of this engine runs on one activation block: they never run at the same time
        self.scratch_bytes = trt_compat.device_memory_size(self.engine)
        self.scratch = cuda.malloc(self.scratch_bytes)
        self.contexts = [self._context(i) for i in (PREFILL, DECODE)]
        bufs = decoder_buffers(graph, dec, self.max_seq_len, batch)
        self.dev = {b.name: cuda.malloc(b.nbytes) for b in bufs}
        if self.staged:
            self.dev[KV_STAGING] = cuda.malloc(self.dev[KV_CACHE].nbytes)
        self.empty = cuda.malloc(ALIGN * 2 * dec.n_layers)  # distinct non-null addresses for 0-row past tensors
        self.host = {b.name: cuda.pinned(b.shape, b.dtype) for b in bufs if b.name != KV_CACHE}
        self.logits = self.host[io.LOGITS]  # [B, V] f32, pinned; returned to the loop and reused
        self.engine_seconds = 0.0  # inside launch + synchronize (see runtime.backend.DecoderEngine)
        cuda.memset(self.dev[KV_CACHE].ptr, 0, self.dev[KV_CACHE].nbytes, stream)
        cuda.synchronize(stream)
        self.use_graphs = cuda_graphs and cuda.supports_graphs
        # pos -> (its own decode context, the captured step): a graph is only valid while the context
        # it was captured from keeps its shapes and addresses, so each position gets one and keeps it
        self.graphs: dict[int, tuple[_Context, object]] = {}

    def _context(self, profile: int) -> _Context:
        return _Context(self.trt, self.engine, self.path, profile, self.plan.profiles[profile], self.scratch,
                        self.scratch_bytes, self.stream)

    def forward(self, inputs_embeds: np.ndarray, pos: int) -> np.ndarray:
        b, s, d = inputs_embeds.shape
        assert b == self.batch and d == self.dec.dim, inputs_embeds.shape
        call = decoder_call(self.dec, self.max_seq_len, b, self.itemsize, s, pos)
        embeds = self.host[io.INPUTS_EMBEDS].reshape(-1)[:b * s * d]  # the first B*S*D of [B, T, D]
        embeds[:] = inputs_embeds.reshape(-1)
        positions = self.host[io.POSITION_IDS].reshape(-1)[:b * s]  # [B*S] of [B, T]
        positions[:] = np.tile(np.arange(pos, pos + s, dtype=positions.dtype), b)

        captured = self.graphs.get(pos) if s == 1 else None
        fresh = None
        t0 = time.perf_counter()
        if captured is not None:
            captured[1].launch(self.stream)  # copies in, engine, logits out, recorded at this pos's first visit
        else:
            context = self.contexts[call.profile]
            if s == 1 and self.use_graphs and len(self.graphs) < MAX_GRAPHS:
                fresh = self._capture_context(pos)
                context = fresh or context
            self._bind(context, call, pos)
            self._step(context, call, embeds, positions)
        self.cuda.synchronize(self.stream)
        self.engine_seconds += time.perf_counter() - t0
        if fresh is not None:
            self._capture(fresh, call, pos, embeds, positions)
        return self.logits  # [B, V]

    def _bind(self, context: _Context, call, pos: int) -> None:
        for name, shape in call.shapes.items():
            context.set_shape(name, shape)
        for name in (io.INPUTS_EMBEDS, io.POSITION_IDS, io.LOGITS):
            context.set_address(name, self.dev[name].ptr)
        cache, k = self.dev[KV_CACHE].ptr, 0
        for i in range(self.dec.n_layers):
            for kv, (past, new) in enumerate(((io.past_key(i), io.new_key(i)), (io.past_value(i), io.new_value(i)))):
                context.set_address(past, self.empty.ptr + ALIGN * k if pos == 0 else cache + call.offsets[past])
                context.set_address(new, self._staging(i, kv) if self.staged else cache + call.offsets[new])
                k += 1

    def _staging(self, layer: int, kv: int) -> int:
        return self.dev[KV_STAGING].ptr + kv_offset(self.dec, self.max_seq_len, self.batch, self.itemsize, layer, kv, 0)

    def _step(self, context: _Context, call, embeds: np.ndarray, positions: np.ndarray) -> None:
        self.cuda.h2d(self.dev[io.INPUTS_EMBEDS].ptr, embeds, self.stream)
        self.cuda.h2d(self.dev[io.POSITION_IDS].ptr, positions, self.stream)
        context.execute(self.stream)
        if self.staged:  # new rows -> cache rows pos..pos+seq-1 (where call.offsets puts them), device to device
            cache, nbytes = self.dev[KV_CACHE].ptr, call.shapes[io.INPUTS_EMBEDS][1] * self.row_bytes
            for i in range(self.dec.n_layers):
                for kv, new in enumerate((io.new_key(i), io.new_value(i))):
                    self.cuda.d2d(cache + call.offsets[new], self._staging(i, kv), nbytes, self.stream)
        self.cuda.d2h(self.logits, self.dev[io.LOGITS].ptr, self.stream)  # only the logits come back

    def _capture_context(self, pos: int) -> _Context | None:
        try:
            return self._context(DECODE)
        except EngineError as e:
            log.warning("no execution context for a CUDA graph at position %d (%s); decoding without CUDA graphs",
                        pos, e)
            self.use_graphs = False
            return None

    def _capture(self, context: _Context, call, pos: int, embeds: np.ndarray, positions: np.ndarray) -> None:
        """Record this position's step on its own context (which has just run it once, as TensorRT asks)."""
        try:
            self.cuda.begin_capture(self.stream)
            try:
                self._step(context, call, embeds, positions)
            finally:
                graph = self.cuda.end_capture(self.stream)
        except EngineError as e:
            log.warning("CUDA graph capture failed at position %d (%s); decoding without CUDA graphs", pos, e)
            self.use_graphs = False
            return
        self.graphs[pos] = (context, graph)


# ----------------------------------------------------------------------------- the pair


class TrtEngines:
    """Both plans, one CUDA stream, and the memory they own; close() releases it all."""

    def __init__(self, engine_dir: Path, manifest: Manifest, cuda=None, max_seq_len: int | None = None,
                 cuda_graphs: bool = True):
        trt = trt_compat.import_tensorrt()
        self.cuda = cuda or cuda_mem.open_cuda()
        self.stream = self.cuda.new_stream()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        t, g = manifest.trt, manifest.graphs
        assert t is not None, "choose_backend checks that the folder has plans"
        self.vision = TrtVision(trt, self._runtime, self.cuda, self.stream, engine_dir, g.vision, t.vision,
                                manifest.adapter.image_tokens, manifest.decoder.dim)
        self.decoder = TrtDecoder(trt, self._runtime, self.cuda, self.stream, engine_dir, g.decoder, t.decoder,
                                  manifest.decoder, max_seq_len, cuda_graphs=cuda_graphs)

    def close(self) -> None:
        """Drop TensorRT objects (contexts before their engine) before the memory they point into."""
        if self.decoder is not None:
            self.decoder.graphs.clear()
            self.decoder.contexts.clear()
            self.decoder.engine = None
        if self.vision is not None:
            self.vision.context = self.vision.engine = None
        self.decoder = self.vision = self._runtime = None
        self.cuda.close()
