"""TensorRT 10.3 compatibility lint for ONNX graphs (the Jetson / JetPack 6 parser).

Inputs:  an `onnx.ModelProto` loaded with `load_external_data=False` (or a path, `lint_file`),
         and the folder holding its external-data files (`base_dir`), needed only to read a
         Q/DQ zero point that was saved outside the .onnx file.
Outputs: a list of human-readable problems, each naming the graph, the node and the fix;
         an empty list means every node is one the TensorRT 10.3 ONNX parser imports.

Checks, walking If/Loop/Scan bodies and model-local functions too:
    domain      default domain only ('' or 'ai.onnx'); com.microsoft ops are ONNX Runtime's
    op type     in TRT_10_3_OPS; integer-arithmetic ops and ops added after 10.3 get their own fix
    opset       default-domain opset in [TRT_10_3_MIN_OPSET, TRT_10_3_MAX_OPSET]
    Q/DQ        symmetric (zero point absent or all zeros), INT8 / INT4 (weights only) / FP8 E4M3,
                scale a build-time constant of float32/float16/bfloat16

This is a static check of what the parser documents, not a build: shape- or value-dependent
limits (TopK's K, Resize modes, pooling ranks) still surface only when the engine is built.
Imports onnx and the standard library only, so tests and export code can both use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto, numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor

# ----------------------------------------------------------------------------- the parser's op list

# Source: onnx/onnx-tensorrt docs/operators.md, the rows marked "Y".
#   The release/10.3-GA version of that file is not in the stored copies we could read, so the
#   list starts from the oldest stored 10.x version with a known commit:
#     commit 554c9f1b7fc048e39e3afe0c2af757902eb7b23e
#     "TensorRT 10.8 supports operators in the inclusive range of opset 9 to opset 22."
#   and removes what docs/Changelog.md says arrived after 10.3 (see TRT_OPS_ADDED_AFTER_10_3):
#     10.4 "Added support for `BlackmanWindow`, `HammingWindow`, and `HannWindow` operations"
#     10.5 "Added support for real-valued `STFT` operations"
#   Changelog entries 10.1-10.3 add only DeformConv (10.1), which stays in.  Cross-checks: the
#   10.12 (4df19968...), 10.13 (23957b76...) and 10.15 (fa5aa9f6...) versions list the same
#   rows plus the later additions below.  ImageScaler, ParametricSoftplus and ScaledTanh are
#   old experimental ONNX ops the parser still imports.
TRT_10_3_OPS: frozenset[str] = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh",
    "AveragePool", "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat",
    "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DeformConv",
    "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp",
    "Expand", "EyeLike", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm",
    "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample",
    "GroupNormalization", "GRU", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If",
    "ImageScaler", "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu",
    "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization", "LpPool",
    "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul",
    "Neg", "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow",
    "PRelu", "QuantizeLinear", "RandomNormal", "RandomNormalLike", "RandomUniform",
    "RandomUniformLike", "Range", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
    "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RNN", "RoiAlign", "Round",
    "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink",
    "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign",
    "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu",
    "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
})  # 150 ops

# Ops a desktop TensorRT imports but the Jetson's 10.3 does not (docs/Changelog.md).
TRT_OPS_ADDED_AFTER_10_3: dict[str, str] = {
    "BlackmanWindow": "10.4", "HammingWindow": "10.4", "HannWindow": "10.4", "STFT": "10.5",
    "Attention": "10.14", "RMSNormalization": "10.15", "RotaryEmbedding": "10.15",
    "TensorScatter": "10.15",
}

# Integer-arithmetic quantization ("QOperator" format): rows marked "N" in every stored version.
# TensorRT only takes quantization as QuantizeLinear/DequantizeLinear pairs around float ops.
_INTEGER_OPS: dict[str, str] = {
    "MatMulInteger": "MatMul", "QLinearMatMul": "MatMul", "ConvInteger": "Conv",
    "QLinearConv": "Conv", "DynamicQuantizeLinear": "QuantizeLinear with a constant scale",
}

# Opset range.  The stored 10.0 header reads "TensorRT 10.0 supports operators in the inclusive
# range of opset 9 to opset 20"; 10.8 reads "... opset 9 to opset 22".  We allow 21 on 10.3
# because the 10.x tables list INT4 for DequantizeLinear and INT4 tensors (and the block_size
# attribute blocked INT4 needs) exist only from opset 21: the parser has to take opset-21 DQ
# for its own INT4 support to work.  One opset-21 change it does not take until 10.9
# ("Added support for opset 21 GroupNorm") is checked separately.  Opset 22 stays out: the
# parser took the ONNX 1.17 submodule (opset 22) only in 10.6.
TRT_10_3_MIN_OPSET = 9
TRT_10_3_DOC_MAX_OPSET = 20
TRT_10_3_MAX_OPSET = 21

_DEFAULT_DOMAINS = ("", "ai.onnx")
_ORT_DOMAIN = "com.microsoft"

# Q/DQ rules.  docs/operators.md, 10.8 (FP4 is 10.8's addition, so 10.3 has INT8, FP8, INT4):
#   "| DequantizeLinear | Y | INT8, FP8, FP4, INT4 | `x_zero_point` must be zero |"
#   "| QuantizeLinear   | Y | FP32, FP16, BF16 | `y_zero_point` must be 0 |"
# and the 10.0 header: "INT8, INT4, and FP8 are treated as `Quantized Types` in TensorRT".  The developer guide
# ("Working with Quantized Types") adds: FP8 is E4M3, and INT4 is weight-only quantization.
_QUANT_TYPES = {TensorProto.INT8, TensorProto.INT4, TensorProto.FLOAT8E4M3FN}
_SCALE_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16}
_UNSIGNED = {TensorProto.UINT8, TensorProto.UINT4, TensorProto.UINT16}


def _type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else str(elem_type)


# ----------------------------------------------------------------------------- scopes


@dataclass
class _Scope:
    """What a graph can see: build-time constants (initializers, Constant outputs) and known
    element types, its own plus every enclosing graph's."""

    constants: dict[str, TensorProto] = field(default_factory=dict)
    elem_types: dict[str, int] = field(default_factory=dict)

    def child(self, graph: onnx.GraphProto) -> _Scope:
        scope = _Scope(dict(self.constants), dict(self.elem_types))
        scope.add_graph(graph)
        return scope

    def add_graph(self, graph: onnx.GraphProto) -> None:
        for vi in (*graph.input, *graph.value_info, *graph.output):
            if vi.type.HasField("tensor_type"):
                self.elem_types[vi.name] = vi.type.tensor_type.elem_type
        for t in graph.initializer:
            self.constants[t.name] = t
            self.elem_types[t.name] = t.data_type
        for n in graph.node:
            self.add_constant_node(n)

    def add_constant_node(self, node: onnx.NodeProto) -> None:
        if node.op_type != "Constant" or node.domain not in _DEFAULT_DOMAINS or not node.output:
            return
        tensor = _constant_value(node)
        if tensor is not None:
            self.constants[node.output[0]] = tensor
            self.elem_types[node.output[0]] = tensor.data_type


def _constant_value(node: onnx.NodeProto) -> TensorProto | None:
    """The tensor a Constant node produces, or None for string/sparse values."""
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name in ("value_float", "value_int"):  # scalars
            elem, value = (TensorProto.FLOAT, a.f) if a.name == "value_float" else (TensorProto.INT64, a.i)
            return onnx.helper.make_tensor(node.output[0], elem, [], [value])
        if a.name in ("value_floats", "value_ints"):  # 1-D
            elem, values = ((TensorProto.FLOAT, list(a.floats)) if a.name == "value_floats"
                            else (TensorProto.INT64, list(a.ints)))
            return onnx.helper.make_tensor(node.output[0], elem, [len(values)], values)
    return None


@dataclass
class _Context:
    opset: int | None
    functions: dict[tuple[str, str], onnx.FunctionProto]
    base_dir: str | None
    problems: list[str] = field(default_factory=list)
    functions_seen: set[tuple[str, str]] = field(default_factory=set)


# ----------------------------------------------------------------------------- entry points


def lint_for_tensorrt(model: onnx.ModelProto, base_dir: str | None = None) -> list[str]:
    """Problems that keep the TensorRT 10.3 ONNX parser from importing `model` ([] = none found).

    model:    loaded with `onnx.load(path, load_external_data=False)`; it is not modified.
    base_dir: folder of the external-data files, used only to read zero points stored there.
    """
    ctx = _Context(_default_opset(model), {(f.domain, f.name): f for f in model.functions}, base_dir)
    _lint_opset(ctx)
    _lint_graph(model.graph, _Scope().child(model.graph), "main graph", ctx)
    return ctx.problems


def lint_file(path: str | os.PathLike) -> list[str]:
    """`lint_for_tensorrt` on an .onnx file; external data is read from the file's folder."""
    path = os.fspath(path)
    model = onnx.load(path, load_external_data=False)
    return lint_for_tensorrt(model, base_dir=os.path.dirname(os.path.abspath(path)))


# ----------------------------------------------------------------------------- opset


def _default_opset(model: onnx.ModelProto) -> int | None:
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    return versions[0] if versions else None


def _lint_opset(ctx: _Context) -> None:
    fix = f"re-export with opset_version between {TRT_10_3_MIN_OPSET} and {TRT_10_3_DOC_MAX_OPSET} " \
          f"({TRT_10_3_MAX_OPSET} only for INT4 blocked DequantizeLinear)"
    if ctx.opset is None:
        ctx.problems.append(f"model: no opset_import for the default ONNX domain; expected one in "
                            f"[{TRT_10_3_MIN_OPSET}, {TRT_10_3_MAX_OPSET}]; {fix}")
    elif not TRT_10_3_MIN_OPSET <= ctx.opset <= TRT_10_3_MAX_OPSET:
        ctx.problems.append(f"model: default-domain opset {ctx.opset} is outside what the TensorRT 10.3 "
                            f"parser accepts, [{TRT_10_3_MIN_OPSET}, {TRT_10_3_MAX_OPSET}]; {fix}")


# ----------------------------------------------------------------------------- graph walk


def _where(graph_path: str, index: int, node: onnx.NodeProto) -> str:
    name = f" '{node.name}'" if node.name else ""
    return f"{graph_path}: node #{index}{name} ({node.op_type})"


def _lint_graph(graph: onnx.GraphProto, scope: _Scope, graph_path: str, ctx: _Context) -> None:
    for i, node in enumerate(graph.node):
        where = _where(graph_path, i, node)
        _lint_node(node, where, scope, ctx)
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for k, sub in enumerate(subgraphs):
                label = attr.name if len(subgraphs) == 1 else f"{attr.name}[{k}]"
                _lint_graph(sub, scope.child(sub), f"{where} > {label}", ctx)


def _lint_function(key: tuple[str, str], where: str, ctx: _Context) -> None:
    """Model-local functions are inlined by the parser (TensorRT >= 9.0): lint their bodies once."""
    if key in ctx.functions_seen:
        return
    ctx.functions_seen.add(key)
    scope = _Scope()
    for n in ctx.functions[key].node:
        scope.add_constant_node(n)
    for i, n in enumerate(ctx.functions[key].node):
        _lint_node(n, _where(f"{where} > function {key[0]}.{key[1]}", i, n), scope, ctx)


def _lint_node(node: onnx.NodeProto, where: str, scope: _Scope, ctx: _Context) -> None:
    op = node.op_type
    if node.domain not in _DEFAULT_DOMAINS:
        if (node.domain, op) in ctx.functions:
            _lint_function((node.domain, op), where, ctx)
        elif node.domain == _ORT_DOMAIN:
            ctx.problems.append(f"{where}: domain '{_ORT_DOMAIN}' is an ONNX Runtime contrib op, TensorRT "
                                f"expects default-domain ONNX ops; export with --flavour standard")
        else:
            ctx.problems.append(f"{where}: domain '{node.domain}' is not the default ONNX domain and no "
                                f"model-local function defines it; TensorRT would need a plugin named "
                                f"'{op}'; export this part with default-domain ops")
        return

    if op in _INTEGER_OPS:
        ctx.problems.append(f"{where}: integer-arithmetic quantized op, TensorRT 10.3 has no importer for "
                            f"it; expected QDQ form (QuantizeLinear/DequantizeLinear around a float "
                            f"{_INTEGER_OPS[op]}); re-quantize in QDQ format, symmetric int8")
    elif op in TRT_OPS_ADDED_AFTER_10_3:
        ctx.problems.append(f"{where}: imported by TensorRT >= {TRT_OPS_ADDED_AFTER_10_3[op]} only, the "
                            f"Jetson's TensorRT 10.3 rejects it; decompose it into older ops at export")
    elif op not in TRT_10_3_OPS:
        ctx.problems.append(f"{where}: op not supported by the TensorRT 10.3 ONNX parser "
                            f"(onnx-tensorrt docs/operators.md); replace it with supported ops at export")

    if op == "GroupNormalization" and ctx.opset is not None and ctx.opset >= 21:
        ctx.problems.append(f"{where}: opset-21 GroupNormalization (per-channel scale) is imported from "
                            f"TensorRT 10.9 on, 10.3 takes only the opset-18 form; export at opset <= 20 "
                            f"or decompose the norm")
    if op in ("QuantizeLinear", "DequantizeLinear"):
        _lint_qdq(node, where, scope, ctx)


# ----------------------------------------------------------------------------- Q/DQ


def _attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _lint_qdq(node: onnx.NodeProto, where: str, scope: _Scope, ctx: _Context) -> None:
    inputs = [*node.input, "", ""]
    x, scale, zero_point = inputs[0], inputs[1], inputs[2]
    is_q = node.op_type == "QuantizeLinear"

    scale_t = scope.constants.get(scale)
    if scale_t is None:
        ctx.problems.append(f"{where}: scale '{scale}' is computed at run time; TensorRT needs a build-time "
                            f"scale (initializer or Constant output); fold the scale into an initializer")
    elif scale_t.data_type not in _SCALE_TYPES:
        ctx.problems.append(f"{where}: scale '{scale}' is {_type_name(scale_t.data_type)}, expected FLOAT or "
                            f"FLOAT16 (BFLOAT16); cast the scale initializer")

    # The quantized element type: the zero point's, else the data's (DQ) / output_dtype (Q, opset 21;
    # without it and without a zero point ONNX defines the output as UINT8).
    qtype: int | None
    if zero_point:
        qtype = _lint_zero_point(zero_point, where, scope, ctx)
    elif is_q:
        qtype = _attr_int(node, "output_dtype", 0) or TensorProto.UINT8
    else:
        qtype = scope.elem_types.get(x)
    if qtype is None:
        return

    if qtype in _UNSIGNED:
        ctx.problems.append(f"{where}: quantized type {_type_name(qtype)} is unsigned; TensorRT needs "
                            f"symmetric quantization, zero point 0, signed INT8/INT4 (or FP8 E4M3); "
                            f"re-quantize symmetric int8 (zero point int8 0)")
    elif qtype not in _QUANT_TYPES:
        ctx.problems.append(f"{where}: quantized type {_type_name(qtype)}, expected INT8, INT4 (weights) or "
                            f"FLOAT8E4M3FN for TensorRT 10.3; re-quantize to one of those")
    elif qtype == TensorProto.INT4 and (is_q or x not in scope.constants):
        ctx.problems.append(f"{where}: INT4 is weight-only in TensorRT (the input must be an initializer "
                            f"and only DequantizeLinear may use it); keep activations in INT8/FP8 or float")

    if _attr_int(node, "block_size", 0) and qtype != TensorProto.INT4:
        ctx.problems.append(f"{where}: blocked quantization (block_size) with {_type_name(qtype)}; TensorRT "
                            f"10.3 blocks only INT4 weights; use per-channel (axis) scales for INT8")


def _lint_zero_point(name: str, where: str, scope: _Scope, ctx: _Context) -> int | None:
    """Check one Q/DQ zero point is a constant of zeros; returns its element type (None if unknown)."""
    tensor = scope.constants.get(name)
    if tensor is None:
        ctx.problems.append(f"{where}: zero point '{name}' is not an initializer or Constant; TensorRT needs "
                            f"symmetric quantization, zero point 0; drop the zero point input")
        return scope.elem_types.get(name)
    try:
        values = _tensor_values(tensor, ctx.base_dir)
    except _ExternalDataError as e:
        ctx.problems.append(f"{where}: zero point '{name}': {e}")
        return tensor.data_type
    if values.size and bool((values.astype("float32") != 0).any()):
        nonzero = int((values.astype("float32") != 0).sum())
        ctx.problems.append(f"{where}: zero point '{name}' has {nonzero} nonzero value(s) of {values.size}; "
                            f"TensorRT needs symmetric quantization, zero point 0; re-quantize symmetric")
    return tensor.data_type


class _ExternalDataError(Exception):
    pass


def _tensor_values(tensor: TensorProto, base_dir: str | None):
    """The tensor as a NumPy array; external data is read into a copy, never into the model."""
    if tensor.data_location == TensorProto.EXTERNAL:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
        if base_dir is None:
            raise _ExternalDataError(f"stored in external file '{location}' and no base_dir was given; "
                                     f"call lint_for_tensorrt(model, base_dir=<folder of the .onnx>) or lint_file")
        copy = TensorProto()
        copy.CopyFrom(tensor)
        try:
            load_external_data_for_tensor(copy, base_dir)
        except (OSError, ValueError, onnx.checker.ValidationError) as e:  # missing file, bad path
            raise _ExternalDataError(f"cannot read external file '{location}' under '{base_dir}' ({e}); "
                                     f"pass the folder that holds it as base_dir") from e
        del copy.external_data[:]
        copy.data_location = TensorProto.DEFAULT
        tensor = copy
    return numpy_helper.to_array(tensor)
