"""The small interface every backend implements; the scheduler (runtime.engine) knows nothing else.

VisionEngine.encode(pixels [B,3,H,W] f32) -> image_embeds [B,image_tokens,dim] f32

DecoderEngine: a KV cache of `max_batch` slots, each a sequence's rows 0..max_seq_len-1, owned by the
engine (allocated at load, grown as needed).  A slot holds no identity: the caller says which slot a
call reads and writes, and what each slot's cached length is.
    prefill(slot, inputs_embeds [1,S,dim] f32, pos) -> logits [1,vocab] f32
        Positions pos..pos+S-1 of one slot (a whole prompt, a chunk of one, or S=1), against that slot's
        rows 0..pos-1; writes their K/V into its rows pos..pos+S-1.
    decode(inputs_embeds [n,1,dim] f32, positions [n] int64) -> logits [n,vocab] f32
        One token for each of slots 0..n-1 (n <= max_batch), slot i at its own position positions[i],
        against its rows 0..positions[i]-1; writes row positions[i] of slot i.  A slot with no sequence
        in it still takes part (zeros in, its filled length as its position; its logits are ignored): it
        must not lose its rows, since a chunked prefill may be under way there.
    forward(inputs_embeds [1,S,dim], pos) -> logits [1,vocab]: prefill(0, ...), the one-sequence path.
    cancel() / resume() (optional): from another thread, make the call in flight (and every later one) raise
        runtime.errors.Cancelled until resume(); the engine uses them to stop a call whose sequences were all
        cancelled.  A backend without them finishes its calls (TensorRT's are milliseconds).
The returned array may be reused by the next call.  Every sequence of a batch gets the logits it would get
alone (the batched parity tests hold every backend to it).

ONNX Runtime implements it in `runtime.ort_backend`, TensorRT in `runtime.trt_backend`;
`runtime.backend_select` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from runtime.errors import EngineError
from runtime.manifest import FLAVOURS, PRECISIONS, GraphSpec


class VisionEngine(Protocol):
    def encode(self, pixels: np.ndarray) -> np.ndarray: ...


class DecoderEngine(Protocol):
    max_seq_len: int
    max_batch: int  # slots: sequences one decode() call may carry (1 for graphs exported before schema 5)

    # The time spent inside the engine's own calls (ONNX Runtime's run, TensorRT's launch + synchronize),
    # summed over calls; the benchmark's host overhead is the rest of a step.
    engine_seconds: float

    def prefill(self, slot: int, inputs_embeds: np.ndarray, pos: int) -> np.ndarray: ...

    def decode(self, inputs_embeds: np.ndarray, positions: np.ndarray) -> np.ndarray: ...

    def forward(self, inputs_embeds: np.ndarray, pos: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Capabilities:
    """What a backend can run: graph flavours and precisions (see runtime.manifest.GraphSpec)."""

    name: str
    flavours: tuple[str, ...]
    precisions: tuple[str, ...]


# ONNX Runtime's CPU provider runs every flavour and precision (FP16 nodes without an FP16
# kernel get fp32 casts inserted by ONNX Runtime itself: correct, not faster).
ORT_CPU = Capabilities("onnxruntime-cpu", flavours=FLAVOURS, precisions=PRECISIONS)

# TensorRT parses default-domain ONNX only; fp16 tensors, INT8 Q/DQ and INT4 block-quantized
# weights (DequantizeLinear -> MatMul) are all strongly typed graphs it builds as they are.
TRT_GPU = Capabilities("tensorrt", flavours=("standard",), precisions=PRECISIONS)


def check_supported(caps: Capabilities, role: str, spec: GraphSpec, engine_dir) -> None:
    """Refuse a graph the backend cannot run, naming what to export instead."""
    if spec.flavour not in caps.flavours:
        raise EngineError(f"{engine_dir}/{spec.file}: {role} graph is the {spec.flavour!r} flavour "
                          f"({spec.precision}), which the {caps.name} backend cannot run; re-export with "
                          f"`--flavour {caps.flavours[0]}` (supported: {', '.join(caps.flavours)})")
    if spec.precision not in caps.precisions:
        raise EngineError(f"{engine_dir}/{spec.file}: {role} graph is {spec.precision}, which the {caps.name} "
                          f"backend cannot run; re-export with `--{role}-precision {caps.precisions[0]}` "
                          f"(supported: {', '.join(caps.precisions)})")


def check_graph_io(path, spec: GraphSpec, inputs: list[tuple[str, str, list]], outputs: list[tuple[str, str, list]]):
    """Compare a loaded graph's (name, dtype, shape) lists with the manifest's I/O table."""
    for kind, got, want in (("input", inputs, spec.inputs), ("output", outputs, spec.outputs)):
        got_names = [g[0] for g in got]
        want_names = [w.name for w in want]
        if got_names != want_names:
            raise EngineError(f"{path}: graph {kind}s {got_names[:6]}..., manifest.json lists {want_names[:6]}...; "
                              f"the folder mixes files from two exports, re-export it")
        for (name, dtype, shape), w in zip(got, want):
            if dtype != w.dtype or len(shape) != len(w.shape) or not all(map(_dim_agrees, shape, w.shape)):
                raise EngineError(f"{path}: {kind} '{name}' is {dtype}{list(shape)}, manifest.json says "
                                  f"{w.dtype}{list(w.shape)}; re-export the engine folder")


def _dim_agrees(got, want) -> bool:
    """A loaded graph's dim against the manifest's: a fixed size must be the same number; a free one (ONNX
    Runtime: its name or None, TensorRT: -1 or its own label) must be free (a name) in the manifest too."""
    if isinstance(got, int) and got >= 0:
        return isinstance(want, int) and want == got
    return isinstance(want, str)

