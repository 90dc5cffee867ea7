"""TensorRT backend: the VisionEngine / DecoderEngine interface over vision.plan and decoder.plan.

Memory, all allocated once at load (runtime.trt_profiles says the shapes and why):

    device  pixel_values [Bv,3,S,S]  image_embeds [Bv,N,D]               vision I/O
            inputs_embeds [max(T,B),D]  position_ids [max(T,B)]  logits [B,V]   decoder I/O
            kv_cache [L,2,T,B,Hkv,hd]                                     stays on the device
            kv_past, kv_new [L,2,block]  one slot's gathered past / new rows (B > 1, or unaligned rows)
            one activation block per engine (the decoder's contexts share theirs)
    pinned  the same I/O shapes on the host, the only staging the calls copy through

B is the cache's slots: the decode profile's batch, capped by the graph's `max_batch` (1 for graphs
exported before schema 5, which mask by shape) and by the caller.  One decoder call: write the
embeddings and positions into pinned memory, then on one stream copy them in, gather a slot's past
rows if they are strided, enqueue, scatter new rows into the cache (device to device), copy back
only the logits, synchronize.  No K/V byte crosses to the host, ever.

    prefill(slot, [1,S,D], pos)   the "prefill" profile at batch 1 (a one-token prefill is a decode
                                  step that keeps only that slot's row)
    decode([n,1,D], positions)    the "decode" profile at the full width B: slots n..B-1 run on zeros
                                  at position 0 and keep nothing (trt_profiles: why, and the cost)

Device copies per call (L = n_layers; each strided `Copy` of trt_profiles is one cudaMemcpy2DAsync,
or one 1-D copy when its pieces are contiguous), none of them growing with the prompt or the past:

    decode step                    one per written slot (its new row of all 2L (layer, K/V) blocks);
                                   none when B = 1 and rows are ALIGN bytes (written in place)
    prefill of S tokens after pos  2L to scatter the new rows (none in place), and with B > 1 and
                                   pos > 0, 2L more to gather the slot's past rows first

CUDA graphs, with B = 1 only: then a single-token step's shapes, addresses and copies depend only on
pos, so the first visit to a position runs it on a context of its own (sharing the activation block)
and then captures the whole step (copies in, engine, copies, logits out) in a CUDA graph; later
visits, in any request, replay it with one launch.  That context is never re-bound: TensorRT's rule
is one execution context per captured graph.  With B > 1 steps run without graphs: each written
slot's row lands at its own position, so a step's copies depend on every slot's position, and no
(batch, position) key bounds the graphs that would need.  Addresses are 256-byte aligned (TensorRT's
rule); a 0-row past tensor gets its own non-null address.

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
from runtime.trt_profiles import (ALIGN, DECODE, KV_CACHE, KV_NEW, KV_PAST, PREFILL, StepCall, check_shape, decode_call,
                                  decoder_buffers, kv_layout, prefill_call, profile_max, vision_buffers)

log = logging.getLogger(__name__)

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
                 dec: DecoderSpec, max_seq_len: int | None = None, max_batch: int | None = None,
                 cuda_graphs: bool = True):
        self.trt, self.cuda, self.stream, self.dec = trt, cuda, stream, dec
        self.path, self.plan = engine_dir / plan.file, plan
        self.engine = load_engine(trt, trt_runtime, self.path, graph, plan)
        built = profile_max(plan.profiles, io.INPUTS_EMBEDS, 1)
        self.max_seq_len = min(max_seq_len or built, built)
        # slots: what the plan was built for, no more than the graph can mix at different positions
        built_batch = plan.profiles[DECODE].shape(io.INPUTS_EMBEDS).max[0]
        self.max_batch = min(built_batch, graph.max_batch, max_batch or built_batch)
        check_shape(plan.profiles[PREFILL], io.INPUTS_EMBEDS, (1, 1, dec.dim), str(self.path))
        check_shape(plan.profiles[DECODE], io.INPUTS_EMBEDS, (self.max_batch, 1, dec.dim), str(self.path))
        itemsize = np.dtype(graph.input(io.past_key(0)).dtype).itemsize
        self.layout = kv_layout(dec, self.max_seq_len, self.max_batch, itemsize)
        self.staged = not self.layout.in_place  # new K/V rows go through kv_new and a device copy
        if (self.max_seq_len * self.layout.row_bytes) % ALIGN:
            raise EngineError(f"{self.path}: a KV block of {self.max_seq_len} rows x {self.layout.row_bytes} bytes is "
                              f"not {ALIGN}-byte aligned; use an even --max-seq-len")
        # every context of this engine runs on one activation block: they never run at the same time
        self.scratch_bytes = trt_compat.device_memory_size(self.engine)
        self.scratch = cuda.malloc(self.scratch_bytes)
        self.contexts = [self._context(i) for i in (PREFILL, DECODE)]
        bufs = decoder_buffers(graph, dec, self.layout)
        self.dev = {b.name: cuda.malloc(b.nbytes) for b in bufs}
        io_names = (io.INPUTS_EMBEDS, io.POSITION_IDS, io.LOGITS)
        self.host = {b.name: cuda.pinned(b.shape, b.dtype) for b in bufs if b.name in io_names}
        self.logits = self.host[io.LOGITS]  # [B, V] f32, pinned; rows of it returned to the caller and reused
        self.engine_seconds = 0.0  # inside launch + synchronize (see runtime.backend.DecoderEngine)
        cuda.memset(self.dev[KV_CACHE].ptr, 0, self.dev[KV_CACHE].nbytes, stream)
        cuda.synchronize(stream)
        self.use_graphs = cuda_graphs and cuda.supports_graphs and self.max_batch == 1
        # pos -> (its own decode context, the captured step): a graph is only valid while the context
        # it was captured from keeps its shapes and addresses, so each position gets one and keeps it
        self.graphs: dict[int, tuple[_Context, object]] = {}

    def _context(self, profile: int) -> _Context:
        return _Context(self.trt, self.engine, self.path, profile, self.plan.profiles[profile], self.scratch,
                        self.scratch_bytes, self.stream)

    # ------------------------------------------------------------------ the interface

    def forward(self, inputs_embeds: np.ndarray, pos: int) -> np.ndarray:
        return self.prefill(0, inputs_embeds, pos)

    def prefill(self, slot: int, inputs_embeds: np.ndarray, pos: int) -> np.ndarray:
        # [1, S, D] at positions pos..pos+S-1 of `slot` -> logits [1, V]
        one, s, d = inputs_embeds.shape
        assert one == 1 and d == self.dec.dim, inputs_embeds.shape
        if not 0 <= slot < self.max_batch:
            raise EngineError(f"{self.path}: prefill of slot {slot}, the decoder has slots 0..{self.max_batch - 1}; "
                              f"load with a larger max_batch (at most the plan's, rebuild with --max-batch for more)")
        if s == 1:  # a decode step that keeps only this slot's row: its past is the cache's own block
            return self._decode(inputs_embeds, np.array([pos]), slot)
        call = prefill_call(self.dec, self.layout, slot, s, pos)
        self.host[io.INPUTS_EMBEDS][:s] = inputs_embeds[0]  # [S, D] of [max(T,B), D]
        self.host[io.POSITION_IDS][:s] = np.arange(pos, pos + s)  # [S]
        return self._run(call, slice(0, 1), None)  # [1, V]

    def decode(self, inputs_embeds: np.ndarray, positions: np.ndarray) -> np.ndarray:
        # [n, 1, D], slot i at positions[i] -> logits [n, V]
        n = inputs_embeds.shape[0]
        assert inputs_embeds.shape == (n, 1, self.dec.dim) and len(positions) == n, (inputs_embeds.shape, positions)
        if not 1 <= n <= self.max_batch:
            raise EngineError(f"{self.path}: decode of {n} slots, the decoder has {self.max_batch}; load with a "
                              f"larger max_batch (at most the plan's, rebuild with --max-batch for more)")
        return self._decode(inputs_embeds, positions, None)

    # ------------------------------------------------------------------ one step

    def _decode(self, inputs_embeds: np.ndarray, positions: np.ndarray, slot: int | None) -> np.ndarray:
        """Slots 0..n-1 (slot None) or only `slot`, at the full width B; the others on zeros at position 0."""
        b, n = self.max_batch, len(positions)
        rows = slice(0, n) if slot is None else slice(slot, slot + 1)
        pos = np.zeros(b, np.int64)  # [B]
        pos[rows] = positions
        call = decode_call(self.dec, self.layout, pos, tuple(range(rows.start, rows.stop)))
        embeds = self.host[io.INPUTS_EMBEDS][:b]  # [B, D] of [max(T,B), D]
        embeds[:] = 0
        embeds[rows] = inputs_embeds[:, 0]
        self.host[io.POSITION_IDS][:b] = pos
        return self._run(call, rows, int(pos[0]) if b == 1 else None)  # [rows, V]

    def _run(self, call: StepCall, rows: slice, key: int | None) -> np.ndarray:
        """Run one call, replaying or capturing the CUDA graph of position `key` (B = 1 steps only)."""
        captured = self.graphs.get(key) if key is not None else None
        fresh = None
        t0 = time.perf_counter()
        if captured is not None:
            captured[1].launch(self.stream)  # copies in, engine, copies, logits out, recorded at the first visit
        else:
            context = self.contexts[call.profile]
            if key is not None and self.use_graphs and len(self.graphs) < MAX_GRAPHS:
                fresh = self._capture_context(key)
                context = fresh or context
            self._bind(context, call)
            self._step(context, call, rows)
        self.cuda.synchronize(self.stream)
        self.engine_seconds += time.perf_counter() - t0
        if fresh is not None:
            self._capture(fresh, call, key, rows)
        return self.logits[rows]

    def _bind(self, context: _Context, call: StepCall) -> None:
        for name, shape in call.shapes.items():
            context.set_shape(name, shape)
        for name in (io.INPUTS_EMBEDS, io.POSITION_IDS, io.LOGITS):
            context.set_address(name, self.dev[name].ptr)
        for name, (buffer, offset) in call.kv.items():
            context.set_address(name, self.dev[buffer].ptr + offset)

    def _step(self, context: _Context, call: StepCall, rows: slice) -> None:
        n = call.batch * call.seq  # rows of [max(T,B), D] this call reads
        self.cuda.h2d(self.dev[io.INPUTS_EMBEDS].ptr, self.host[io.INPUTS_EMBEDS][:n], self.stream)
        self.cuda.h2d(self.dev[io.POSITION_IDS].ptr, self.host[io.POSITION_IDS][:n], self.stream)
        self._copies(call.gather, KV_PAST, KV_CACHE)
        context.execute(self.stream)
        self._copies(call.scatter, KV_CACHE, KV_NEW)
        out = self.logits[rows]  # [rows, V], only these come back
        self.cuda.d2h(out, self.dev[io.LOGITS].ptr + rows.start * out[0].nbytes, self.stream)

    def _copies(self, copies, dst: str, src: str) -> None:
        """Each Copy in one call: a 2-D copy of its pieces, or a 1-D copy when it is one contiguous run."""
        for c in copies:
            d, s = self.dev[dst].ptr + c.dst, self.dev[src].ptr + c.src
            if c.rows == 1:
                self.cuda.d2d(d, s, c.width, self.stream)
            else:
                self.cuda.d2d_2d(d, c.dst_pitch, s, c.src_pitch, c.width, c.rows, self.stream)

    def _capture_context(self, pos: int) -> _Context | None:
        try:
            return self._context(DECODE)
        except EngineError as e:
            log.warning("no execution context for a CUDA graph at position %d (%s); decoding without CUDA graphs",
                        pos, e)
            self.use_graphs = False
            return None

    def _capture(self, context: _Context, call: StepCall, pos: int, rows: slice) -> None:
        """Record this position's step on its own context (which has just run it once, as TensorRT asks)."""
        try:
            self.cuda.begin_capture(self.stream)
            try:
                self._step(context, call, rows)
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
                 cuda_graphs: bool = True, max_batch: int | None = None):
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
                                  manifest.decoder, max_seq_len, max_batch, cuda_graphs)

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
