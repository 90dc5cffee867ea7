"""Trace the two parts to ONNX (torch.export -> onnxscript), tidy the graphs, save them.

Inputs: an `export.model.FlashVL` with weights.  Outputs: vision.onnx / decoder.onnx with
their weights in one external-data file each (`<name>.data`: needed past 2 GB, and it lets
ONNX Runtime map the weights instead of copying them), and the `GraphSpec` I/O tables the
manifest records.  Names come from `runtime.graph_io`.
"""

from __future__ import annotations

import ast
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch.export import Dim

from export.graphs import graph_spec, save
from export.model import FlashVL
from runtime import graph_io as io
from runtime.manifest import ArraySpec, GraphSpec

log = logging.getLogger(__name__)

OPSET = 18


def export_vision(model: FlashVL, path: Path) -> GraphSpec:
    p = model.preset
    pixels = torch.zeros(2, 3, p.preprocess.height, p.preprocess.width)
    batch = Dim("batch", min=1, max=64)
    _export(model.vision_graph, (pixels,), path, [io.PIXEL_VALUES], [io.IMAGE_EMBEDS],
            dynamic_shapes=({0: batch},))
    return graph_spec(path)


def export_embeddings(model: FlashVL, path: Path) -> ArraySpec:
    table = model.decoder.embed_tokens.weight.detach().numpy()  # [vocab, dim] f32
    np.save(path, table)
    return ArraySpec(file=path.name, dtype=str(table.dtype), shape=tuple(table.shape))


def export_decoder(model: FlashVL, path: Path) -> GraphSpec:
    d = model.preset.decoder
    b, s, past = 2, 3, 4  # example sizes; all three are dynamic in the graph
    embeds = torch.zeros(b, s, d.dim)
    pos = torch.arange(past, past + s, dtype=torch.int64).expand(b, s).contiguous()
    kv = [torch.zeros(past, b, d.n_kv_heads, d.head_dim) for _ in range(2 * d.n_layers)]
    batch = Dim("batch", min=1, max=64)
    seq = Dim("seq", min=1, max=d.max_seq_len)
    past_seq = Dim("past_seq", min=0, max=d.max_seq_len)
    # *past is one varargs entry for torch.export: its shapes go in one nested tuple.
    dyn = ({0: batch, 1: seq}, {0: batch, 1: seq}, tuple({0: past_seq, 1: batch} for _ in kv))
    _export(model.decoder, (embeds, pos, *kv), path, io.decoder_input_names(d.n_layers),
            io.decoder_output_names(d.n_layers), dynamic_shapes=dyn)
    return graph_spec(path)


def _export(module, args, path: Path, input_names, output_names, dynamic_shapes) -> None:
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, dynamo=True, input_names=input_names,
                                    output_names=output_names, dynamic_shapes=dynamic_shapes,
                                    opset_version=OPSET, optimize=True, verbose=False, external_data=True)
    proto = program.model_proto
    _check_names(proto, path, input_names, output_names)
    name_nodes(proto, path.stem)
    save(proto, path)


def _check_names(proto: onnx.ModelProto, path: Path, inputs, outputs) -> None:
    got_in = [i.name for i in proto.graph.input]
    got_out = [o.name for o in proto.graph.output]
    assert got_in == list(inputs), f"{path.name}: exporter produced inputs {got_in}, expected {list(inputs)}"
    assert got_out == list(outputs), f"{path.name}: exporter produced outputs {got_out}, expected {list(outputs)}"


def name_nodes(proto: onnx.ModelProto, root: str) -> None:
    """Hierarchical node names from the module scopes: /decoder/layers.0/self_attn/q_proj/MatMul.

    The exporter's per-node metadata (module scopes, FX nodes, stack traces with this
    machine's file paths) is dropped, so the graph's bytes do not depend on where it was built.
    """
    seen: dict[str, int] = {}
    for node in proto.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))[:-1]  # last = the op itself
        parts, prev = [], ""
        for scope in scopes:
            if scope:
                parts.append(scope[len(prev) + 1:] if prev and scope.startswith(prev + ".") else scope)
                prev = scope
        base = "/".join(["", root, *parts, node.op_type])
        n = seen.get(base, 0)
        seen[base] = n + 1
        node.name = base if n == 0 else f"{base}_{n}"
        del node.metadata_props[:]
    del proto.metadata_props[:]
