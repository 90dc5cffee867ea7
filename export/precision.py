"""Reduced-precision graphs: FP16 conversion and weight-only INT8/INT4 for the decoder.

Each pass reads an fp32 graph written by `export.onnx_export` and rewrites the file (and its
`.data`) in place; the manifest then records what the pass did (`WeightQuant`, flavour, opset).
INT8 activations (the vision graph) come from calibration instead: see `calib.calibrate`.

    fp16   float weights and activations become FP16; norm statistics, softmax, RoPE angles,
           positions and the graph's float inputs/outputs (embeddings, logits) stay fp32.  The KV
           cache becomes FP16 (it is graph I/O, and halving it is the point).
    int8   weight-only: every linear layer's weight is int8, symmetric, one scale per output
    int4   channel (int8) or per block of `block_size` inputs (int4); activations stay fp32.
           Two flavours:
             standard     W_q -> DequantizeLinear(scale, zero point 0) -> MatMul      (TensorRT, ORT)
             onnxruntime  com.microsoft.MatMulNBits (ONNX Runtime's CPU kernel; ORT only), on the
                          fused graph of export.fused_decoder (fp32 there too: the flavour is the graph)

The tied lm_head is a Gemm(x, embed_tokens, transB=1) in the fp32 graph; with `lm_head=True`
it becomes MatMul(x, embed_tokensᵀ) first so the same pass quantizes it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper

from calib.calibrate import CalibConfig
from export.graphs import graph_spec, load, save, set_opset, toposort
from runtime import graph_io as io
from runtime.errors import FlashVLError
from runtime.manifest import FLAVOURS, GraphSpec, WeightQuant

VISION_PRECISIONS = ("fp32", "fp16", "int8")
DECODER_PRECISIONS = ("fp32", "fp16", "int8", "int4")

log = logging.getLogger(__name__)

QDQ_OPSET = 21  # DequantizeLinear with block_size and int4 tensors
NBITS_ACCURACY_LEVEL = 4  # MatMulNBits: int8 activations inside the kernel (ORT's fastest CPU path)

# Op types whose math stays fp32 in an FP16 graph: statistics and exponentials overflow or lose
# too much in FP16, and RoPE angles / positions need more than FP16's 11 bits of mantissa.
_FP32_OPS = {"Softmax", "LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Reciprocal", "Cos", "Sin", "Range"}
_NORM_SCOPE = re.compile(r"/[^/]*norm[^/]*/", re.IGNORECASE)


# ----------------------------------------------------------------------------- fp16


def fp32_node_names(proto: onnx.ModelProto, root: str) -> list[str]:
    """Nodes an FP16 graph keeps in fp32 (see the module docstring)."""
    top = re.compile(rf"^/{re.escape(root)}/[A-Za-z]+(_\d+)?$")  # RoPE angles, positions, mask: /decoder/Cos
    keep = []
    for n in proto.graph.node:
        if n.op_type in _FP32_OPS or _NORM_SCOPE.search(n.name):
            keep.append(n.name)
        elif root == "decoder" and top.match(n.name) and n.op_type not in ("Gemm", "MatMul"):
            keep.append(n.name)
    return keep


def to_fp16(proto: onnx.ModelProto, root: str, fp16_io: tuple[str, ...] = ()) -> onnx.ModelProto:
    """FP16 weights and activations; graph I/O stays fp32 except the names in `fp16_io`."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    io_names = [v.name for v in (*proto.graph.input, *proto.graph.output)]
    keep_io = [n for n in io_names if n not in fp16_io]
    blocked = fp32_node_names(proto, root)
    out = convert_float_to_float16(proto, keep_io_types=keep_io, node_block_list=blocked, disable_shape_infer=True)
    drop_identity_casts(out)
    for i, n in enumerate(out.graph.node):  # the converter's inserted Casts have no scope
        if not n.name:
            n.name = f"/{root}/fp16_cast/Cast_{i}"
    toposort(out.graph)  # the converter appends its input Casts last; checkers and parsers want order
    # Without shape inference (it cannot hold a >2 GB graph) the converter leaves stale intermediate
    # types behind; they are optional, so drop them rather than let a parser trust them.
    del out.graph.value_info[:]
    return out


def drop_identity_casts(proto: onnx.ModelProto) -> None:
    """The converter leaves fp32 initializers of fp32 nodes as they are, but still routes them through
    Cast(to=FLOAT) nodes: identities, which constant folding (`polygraphy surgeon sanitize
    --fold-constants`) would remove.  Remove them here, where the >2 GB graph is already in memory."""
    f32 = {t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    casts = [n for n in proto.graph.node if n.op_type == "Cast" and n.input[0] in f32
             and helper.get_attribute_value(n.attribute[0]) == onnx.TensorProto.FLOAT]
    rename = {c.output[0]: c.input[0] for c in casts}
    for n in proto.graph.node:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
    for c in casts:
        proto.graph.node.remove(c)


def quantize_symmetric(w: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric (zero point 0) quantization of a MatMul weight along its input dimension.

    w [K, N] f32 -> q [K, N] int8 holding values in [-(2^(bits-1)-1), 2^(bits-1)-1],
                    scale [N] (block_size 0: per output channel) or [K/block_size, N] f32
    so that w ≈ q * scale (scale broadcast over each block of rows).
    """
    k, n = w.shape
    qmax = 2 ** (bits - 1) - 1
    if block_size == 0:
        amax = np.abs(w).max(axis=0)  # [N]
    else:
        assert k % block_size == 0, (w.shape, block_size)
        amax = np.abs(w.reshape(k // block_size, block_size, n)).max(axis=1)  # [K/bs, N]
    # an all-zero block, or one so small that amax / qmax underflows to 0, gets scale 1 and q = 0
    scale = (amax / qmax).astype(np.float32)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # [N] or [K/bs, N]
    expand = scale[None, :] if block_size == 0 else np.repeat(scale, block_size, axis=0)  # [1, N] or [K, N]
    q = np.clip(np.rint(w / expand), -qmax, qmax).astype(np.int8)  # [K, N]
    return q, scale


def dequantize(q: np.ndarray, scale: np.ndarray, block_size: int) -> np.ndarray:
    """The inverse used by DequantizeLinear: q [K, N], scale [N] or [K/bs, N] -> [K, N] f32."""
    if block_size == 0:
        return q.astype(np.float32) * scale[None, :]
    return q.astype(np.float32) * np.repeat(scale, block_size, axis=0)


def lm_head_to_matmul(proto: onnx.ModelProto) -> str | None:
    """Gemm(x, W[V,H], transB=1) -> MatMul(x, Wᵀ[H,V]), so the logits projection is a MatMul weight."""
    inits = {t.name: t for t in proto.graph.initializer}
    for i, node in enumerate(proto.graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or len(node.input) != 2 or node.input[1] not in inits
                or attrs.get("transB") != 1 or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0):
            continue
        w = numpy_helper.to_array(inits[node.input[1]])  # [V, H]
        name = node.input[1] + ".T"
        proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), name))  # [H, V]
        users = [n for n in proto.graph.node if node.input[1] in n.input]
        if len(users) == 1:
            proto.graph.initializer.remove(inits[node.input[1]])
        matmul = helper.make_node("MatMul", [node.input[0], name], list(node.output),
                                  name=node.name.rsplit("/", 1)[0] + "/lm_head/MatMul")
        proto.graph.node.remove(node)
        proto.graph.node.insert(i, matmul)
        return matmul.name
    return None


def weight_matmuls(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMul nodes whose second input is a 2-D float initializer: the linear layers."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    shapes = {t.name: tuple(t.dims) for t in proto.graph.initializer if t.data_type in floats}
    return [n for n in proto.graph.node if n.op_type == "MatMul" and len(shapes.get(n.input[1], ())) == 2]


def check_block_size(proto: onnx.ModelProto, block_size: int, skip: set[str]) -> None:
    shapes = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    for n in weight_matmuls(proto):
        k = shapes[n.input[1]][0]
        if n.name not in skip and block_size and k % block_size:
            raise ValueError(f"{n.name}: input width {k} is not a multiple of --block-size {block_size}")


def quantize_weights_qdq(proto: onnx.ModelProto, bits: int, block_size: int, skip: set[str]) -> int:
    """Standard flavour: W -> W_q (int8/int4 initializer) -> DequantizeLinear -> MatMul.  Returns the count."""
    check_block_size(proto, block_size, skip)
    inits = {t.name: t for t in proto.graph.initializer}
    qtype = ml_dtypes.int4 if bits == 4 else np.int8
    done = 0
    for node in weight_matmuls(proto):
        if node.name in skip:
            continue
        w_name = node.input[1]
        w = numpy_helper.to_array(inits[w_name])  # [K, N] f32, or f16 in an fp16 graph
        q, scale = quantize_symmetric(w.astype(np.float32), bits, block_size)
        scale = scale.astype(w.dtype)  # DequantizeLinear outputs the scale's type: the MatMul's
        scope = node.name.rsplit("/", 1)[0]
        q_name, s_name, out = f"{w_name}_q{bits}", f"{w_name}_scale", f"{w_name}_dq"
        proto.graph.initializer.append(numpy_helper.from_array(q.astype(qtype), q_name))
        proto.graph.initializer.append(numpy_helper.from_array(scale, s_name))
        attrs = {"axis": 1} if block_size == 0 else {"axis": 0, "block_size": block_size}
        dq = helper.make_node("DequantizeLinear", [q_name, s_name], [out], name=f"{scope}/DequantizeLinear", **attrs)
        idx = list(proto.graph.node).index(node)
        proto.graph.node.insert(idx, dq)
        node.input[1] = out
        if not any(w_name in n.input for n in proto.graph.node):
            proto.graph.initializer.remove(inits[w_name])
        done += 1
    set_opset(proto, QDQ_OPSET)
    return done


def quantize_weights_nbits(proto: onnx.ModelProto, bits: int, block_size: int, skip: set[str]) -> int:
    """ONNX Runtime flavour: MatMulNBits through ONNX Runtime's own quantizer.  Returns the count."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    from onnxruntime.quantization.quant_utils import QuantFormat

    check_block_size(proto, block_size, skip)
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, bits=bits,
                                          accuracy_level=NBITS_ACCURACY_LEVEL, quant_format=QuantFormat.QOperator,
                                          op_types_to_quantize=("MatMul",))
    quantizer = MatMulNBitsQuantizer(proto, nodes_to_exclude=sorted(skip), algo_config=config)
    quantizer.process()
    out = quantizer.model.model
    proto.CopyFrom(out)
    return sum(1 for n in proto.graph.node if n.op_type == "MatMulNBits")


def quantize_decoder(proto: onnx.ModelProto, bits: int, block_size: int, fmt: str, lm_head: bool,
                     compute: str = "fp32") -> WeightQuant:
    """Weight-only quantization of every linear layer of the decoder graph (in place)."""
    head = lm_head_to_matmul(proto) if lm_head else None
    skip = set() if lm_head else {n.name for n in proto.graph.node if n.op_type == "Gemm"}
    if fmt == "qdq":
        count = quantize_weights_qdq(proto, bits, block_size, skip)
    else:
        count = quantize_weights_nbits(proto, bits, block_size, skip)
    if lm_head:
        assert head is not None, "no tied lm_head Gemm found in the decoder graph"
    return WeightQuant(bits=bits, block_size=block_size, format=fmt, lm_head=lm_head, layers=count, compute=compute)


# ----------------------------------------------------------------------------- the user's choice


@dataclass(frozen=True)
class PrecisionPlan:
    """What `python -m export --precision ...` asked for, checked before any work starts."""

    vision: str = "fp32"  # fp32 | fp16 | int8 (calibrated)
    decoder: str = "fp32"  # fp32 | fp16 | int8 | int4 (weight-only)
    flavour: str = "standard"  # decoder graph: standard (traced; QDQ weights) | onnxruntime (fused; MatMulNBits)
    block_size: int | None = None  # None: int4 -> 32; int8 -> per channel (standard) or 32 (onnxruntime)
    lm_head: bool = False  # quantize the logits projection too
    calib: CalibConfig = field(default_factory=CalibConfig)
    compute: str = "fp32"  # int8/int4 decoder: fp32 activations, or fp16 (W8A16 / W4A16, for TensorRT)

    def __post_init__(self):
        if self.vision not in VISION_PRECISIONS:
            fix = " (INT4 is weight-only, for the decoder: use --vision-precision int8)" if self.vision == "int4" else ""
            raise FlashVLError(f"vision precision {self.vision!r} is not one of {list(VISION_PRECISIONS)}{fix}")
        if self.decoder not in DECODER_PRECISIONS:
            raise FlashVLError(f"decoder precision {self.decoder!r} is not one of {list(DECODER_PRECISIONS)}")
        if self.flavour not in FLAVOURS:
            raise FlashVLError(f"flavour {self.flavour!r} is not one of {list(FLAVOURS)}")
        quantized = self.decoder in ("int8", "int4")
        if self.flavour == "onnxruntime" and self.decoder == "fp16":
            raise FlashVLError("--flavour onnxruntime writes ONNX Runtime's fused CPU decoder (fp32 activations; "
                               "fp32, int8 or int4 weights); an fp16 decoder is for GPUs: drop --flavour, or use "
                               "--decoder-precision fp32/int8/int4")
        if self.compute not in ("fp32", "fp16"):
            raise FlashVLError(f"--compute must be fp32 or fp16, got {self.compute!r}")
        if self.compute == "fp16" and (not quantized or self.flavour != "standard"):
            raise FlashVLError(f"--compute fp16 puts the activations of an int8/int4 standard-flavour decoder in "
                               f"fp16 (W8A16/W4A16); this plan has a {self.decoder} {self.flavour} decoder: use "
                               f"--decoder-precision int4 (or int8) without --flavour onnxruntime")
        if self.lm_head and not quantized:
            raise FlashVLError("--quantize-lm-head needs an int8/int4 decoder (--decoder-precision int8 or int4)")
        b = self.block_size
        if b is not None:
            if not quantized:
                raise FlashVLError("--block-size needs an int8/int4 decoder (--decoder-precision int8 or int4)")
            if self.decoder == "int8" and self.flavour == "standard" and b != 0:
                raise FlashVLError(f"--block-size {b}: standard int8 weights are per channel (TensorRT blocks "
                                   f"only INT4); use --block-size 0, or --flavour onnxruntime for blocked int8")
            if (b or self.flavour == "onnxruntime" or self.decoder == "int4") and (b < 16 or b & (b - 1)):
                raise FlashVLError(f"--block-size must be a power of two of at least 16, got {b}")

    @property
    def weight_block(self) -> int:
        if self.block_size is not None:
            return self.block_size
        return 0 if self.decoder == "int8" and self.flavour == "standard" else 32

    def describe(self) -> str:
        d = self.decoder
        if d in ("int8", "int4"):
            d += f" ({self.flavour}, {'per channel' if self.weight_block == 0 else f'block {self.weight_block}'}" + (
                ", lm_head too" if self.lm_head else "") + (", fp16 activations)" if self.compute == "fp16" else ")")
        return f"vision {self.vision}, decoder {d}"


def plan_from_args(precision: str | None, vision: str | None, decoder: str | None, **rest) -> PrecisionPlan:
    """--precision P sets both graphs (int4: decoder int4 with an int8 vision graph); the others override."""
    base_vision = {"int4": "int8"}.get(precision, precision) if precision else "fp32"
    return PrecisionPlan(vision=vision or base_vision, decoder=decoder or precision or "fp32", **rest)


def reduce_decoder(path: Path, plan: PrecisionPlan, n_layers: int) -> GraphSpec:
    """Rewrite decoder.onnx (fp32) at the plan's precision; return its manifest entry."""
    proto = load(path)
    kv = tuple(f(i) for i in range(n_layers) for f in (io.past_key, io.past_value, io.new_key, io.new_value))
    if plan.decoder == "fp16" or plan.compute == "fp16":
        proto = to_fp16(proto, "decoder", fp16_io=kv)  # W8A16 / W4A16: quantize the fp16 graph's weights
    weights = None
    if plan.decoder in ("int8", "int4"):
        fmt = "qdq" if plan.flavour == "standard" else "matmul_nbits"
        weights = quantize_decoder(proto, int(plan.decoder[3:]), plan.weight_block, fmt, plan.lm_head, plan.compute)
    save(proto, path)
    kv_cache = io.SHARED_BNSH if plan.flavour == "onnxruntime" else io.SEQ_MAJOR  # export.fused_decoder's graph
    return graph_spec(path, precision=plan.decoder, flavour=plan.flavour, weights=weights, kv_cache=kv_cache)


def reduce_vision_fp16(path: Path) -> GraphSpec:
    proto = to_fp16(load(path), "vision")
    save(proto, path)
    return graph_spec(path, precision="fp16")
