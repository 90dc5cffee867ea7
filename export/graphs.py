"""Saved ONNX graphs: load and save with one external-data file, opset, order, and the manifest entry.

Torch-free, so `calib/` and the precision passes use it without the exporter's heavy imports.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from runtime.manifest import ActivationQuant, GraphSpec, TensorSpec, WeightQuant

_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.FLOAT16: "float16",
           onnx.TensorProto.INT32: "int32"}


def load(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=True)


def save(proto: onnx.ModelProto, path: Path) -> None:
    data = path.name + ".data"
    for f in (path, path.with_name(data)):
        f.unlink(missing_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)


def stamp_record(path: Path, key: str, record: str) -> None:
    """Set metadata_props[key] = record in a saved graph, leaving its external weights file as it is."""
    proto = onnx.load(str(path), load_external_data=False)  # initializers keep pointing into the .data file
    for p in list(proto.metadata_props):
        if p.key == key:
            proto.metadata_props.remove(p)
    proto.metadata_props.add(key=key, value=record)
    onnx.save_model(proto, str(path))


def opset_of(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def set_opset(proto: onnx.ModelProto, version: int) -> None:
    """Raise the default-domain opset.  Our ops' semantics are unchanged from 18 to 21 (checked by
    ONNX Runtime parity tests on every precision); onnx.checker validates the result."""
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = max(o.version, version)
    proto.ir_version = max(proto.ir_version, 10)


def toposort(graph: onnx.GraphProto) -> None:
    """Reorder graph.node so every node comes after the producers of its inputs (stable)."""
    ready = {v.name for v in (*graph.input, *graph.initializer)} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        assert len(rest) < len(pending), f"graph has a cycle or a dangling input at {rest[0].name}"
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def graph_spec(path: Path, precision: str = "fp32", flavour: str = "standard", weights: WeightQuant | None = None,
               activations: ActivationQuant | None = None, kv_cache: str = "seq_major") -> GraphSpec:
    """The manifest entry of a saved graph: its I/O table and opset read back from the file itself."""
    proto = onnx.load(str(path), load_external_data=False)

    def specs(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = tuple(d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim)
            out.append(TensorSpec(name=v.name, dtype=_DTYPES[t.elem_type], shape=shape))
        return tuple(out)

    return GraphSpec(file=path.name, precision=precision, flavour=flavour, opset=opset_of(proto), weights=weights,
                     activations=activations, inputs=specs(proto.graph.input), outputs=specs(proto.graph.output),
                     kv_cache=kv_cache)
