"""The decoder as ONNX Runtime's fused CPU graph: the `onnxruntime` flavour's decoder.onnx.

Written node by node from the PyTorch decoder's weights (no tracing), with ONNX Runtime's
contrib ops, so that a decode step runs ~12 nodes a layer instead of ~57:

    inputs_embeds [B,S,D] ─ SimplifiedLayerNorm ─┐                      (layer 0; later layers: SkipSimplifiedLayerNorm
                                                 │                       adds the residual and normalises in one node)
      qkv = MatMul(h, Wqkv [D, (H+2Hkv)·hd]) + bqkv                     one GEMV for Q, K and V
      attn, present_key.i, present_value.i = GroupQueryAttention(qkv, past_key.i, past_value.i,
            seqlens_k, total_sequence_length, cos, sin)                 RoPE, the causal mask, softmax, GQA, and the
                                                                        cache append, in place (shared buffer)
      h2, x = SkipSimplifiedLayerNorm(MatMul(attn, Wo), x)              residual + norm
      mlp = MatMul(silu(MatMul(h2, Wg)) · MatMul(h2, Wu), Wd)
    ... 28 layers ... -> SkipSimplifiedLayerNorm -> last row -> Gemm(embed_tokensᵀ) -> logits [B,V]

The KV cache is GroupQueryAttention's: BNSH, [B, Hkv, max_seq_len, hd] per layer, one buffer bound
as both past_* and present_* (runtime.graph_io, "shared_bnsh").  seqlens_k [B] = pos+S-1 and
total_sequence_length = pos+S tell the op where the new rows go; RoPE positions follow from them.
The rotary tables are computed in fp32 as export.decoder.rope_cos_sin does (equal within one ulp:
NumPy's and PyTorch's cos differ in the last bit).  MatMul weights are [K, N] initializers, so export.precision's
weight-only pass turns them into MatMulNBits as it does for the traced graph.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.graphs import graph_spec
from runtime import graph_io as io
from runtime.manifest import DecoderSpec, GraphSpec

OPSET = 17  # default-domain ops used: Gather, Sigmoid, Mul, Add, MatMul, Gemm
MS = "com.microsoft"


def rope_tables(spec: DecoderSpec, max_seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [max_seq_len, hd/2] f32: angle = pos · θ^(-2i/hd), as Qwen2's rotary embedding."""
    inv_freq = 1.0 / (spec.rope_theta ** (np.arange(0, spec.head_dim, 2, dtype=np.int64).astype(np.float32)
                                          / spec.head_dim))  # [hd/2] f32, as torch computes it
    angles = np.arange(max_seq_len, dtype=np.float32)[:, None] * inv_freq[None, :]  # [T, hd/2] f32
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class _Graph:
    """Nodes, initializers and unique names, with hierarchical scopes (/decoder/layers.0/attn/...).

    With `data` (an open file), each initializer of 1 KiB or more is written there as it is made and
    the proto only points at it (ONNX external data): the full-size graph never sits in memory twice.
    """

    def __init__(self, data=None, location: str = ""):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.data, self.location = data, location

    def weight(self, name: str, array: np.ndarray) -> str:
        array = np.array(array, order="C")  # (np.ascontiguousarray would make a 0-d index 1-d)
        if self.data is None or array.nbytes < 1024:
            self.inits.append(numpy_helper.from_array(array, name))
            return name
        offset = self.data.tell()
        self.data.write(array.tobytes())
        t = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape,
                             data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(array.nbytes))):
            t.external_data.add(key=key, value=value)
        self.inits.append(t)
        return name

    def node(self, op: str, inputs: list[str], scope: str, domain: str = "", outputs=None, **attrs) -> list[str]:
        outs = outputs or [f"{scope}/{op}_out0"]
        self.nodes.append(helper.make_node(op, inputs, outs, name=f"{scope}/{op}", domain=domain or None, **attrs))
        return outs


def _t(p) -> np.ndarray:
    return p.detach().float().numpy()


def build(decoder, spec: DecoderSpec, max_seq_len: int, data=None, location: str = "") -> onnx.ModelProto:
    """The fused graph of `decoder` (export.decoder.Decoder, fp32 weights); with `data`, an open binary
    file named `location` beside the graph, its large initializers are written there (external data)."""
    g = _Graph(data, location)
    hd, h, hkv = spec.head_dim, spec.n_heads, spec.n_kv_heads
    eps = float(spec.norm_eps)
    cos, sin = rope_tables(spec, max_seq_len)
    g.weight("rope.cos", cos)  # [T, hd/2]
    g.weight("rope.sin", sin)
    x = io.INPUTS_EMBEDS  # [B, S, D]
    mlp = None
    for i, layer in enumerate(decoder.layers):
        s = f"/decoder/layers.{i}"
        w_in = g.weight(f"layers.{i}.input_layernorm.weight", _t(layer.input_layernorm.weight))
        if mlp is None:
            (hn,) = g.node("SimplifiedLayerNormalization", [x, w_in], f"{s}/input_layernorm", axis=-1, epsilon=eps)
        else:  # the previous layer's MLP residual, added and normalised in one node
            hn, x = g.node("SkipSimplifiedLayerNormalization", [mlp, x, w_in], f"{s}/input_layernorm", domain=MS,
                           outputs=[f"{s}/input_layernorm/out", "", "", f"{s}/residual_in"], epsilon=eps)[::3]
        a = layer.self_attn
        wqkv = np.concatenate([_t(a.q_proj.weight), _t(a.k_proj.weight), _t(a.v_proj.weight)], 0).T  # [D, (H+2Hkv)hd]
        bqkv = np.concatenate([_t(a.q_proj.bias), _t(a.k_proj.bias), _t(a.v_proj.bias)], 0)  # [(H+2Hkv)hd]
        (qkv,) = g.node("MatMul", [hn, g.weight(f"layers.{i}.attn.qkv_proj.weight", wqkv)], f"{s}/attn/qkv_proj")
        (qkv,) = g.node("Add", [qkv, g.weight(f"layers.{i}.attn.qkv_proj.bias", bqkv)], f"{s}/attn/qkv_proj")
        attn, _, _ = g.node(  # [B, S, H*hd]; present_* are the same buffers as past_* (bound by the runtime)
            "GroupQueryAttention", [qkv, "", "", io.past_key(i), io.past_value(i), io.SEQLENS_K, io.TOTAL_SEQ_LEN,
                                    "rope.cos", "rope.sin"], f"{s}/attn", domain=MS,
            outputs=[f"{s}/attn/out", io.present_key(i), io.present_value(i)],
            num_heads=h, kv_num_heads=hkv, do_rotary=1, rotary_interleaved=0, scale=1.0 / math.sqrt(hd))
        (o,) = g.node("MatMul", [attn, g.weight(f"layers.{i}.attn.o_proj.weight", _t(a.o_proj.weight).T)],
                      f"{s}/attn/o_proj")
        w_post = g.weight(f"layers.{i}.post_attention_layernorm.weight", _t(layer.post_attention_layernorm.weight))
        h2, x = g.node("SkipSimplifiedLayerNormalization", [o, x, w_post], f"{s}/post_attention_layernorm",
                       domain=MS, outputs=[f"{s}/post_attention_layernorm/out", "", "", f"{s}/residual_attn"],
                       epsilon=eps)[::3]
        m = layer.mlp
        (gate,) = g.node("MatMul", [h2, g.weight(f"layers.{i}.mlp.gate_proj.weight", _t(m.gate_proj.weight).T)],
                         f"{s}/mlp/gate_proj")
        (up,) = g.node("MatMul", [h2, g.weight(f"layers.{i}.mlp.up_proj.weight", _t(m.up_proj.weight).T)],
                       f"{s}/mlp/up_proj")
        (sig,) = g.node("Sigmoid", [gate], f"{s}/mlp/act")
        (act,) = g.node("Mul", [gate, sig], f"{s}/mlp/act")  # silu; ONNX Runtime fuses the pair (QuickGelu)
        (act,) = g.node("Mul", [act, up], f"{s}/mlp/gate_up")
        (mlp,) = g.node("MatMul", [act, g.weight(f"layers.{i}.mlp.down_proj.weight", _t(m.down_proj.weight).T)],
                        f"{s}/mlp/down_proj")
    w_norm = g.weight("norm.weight", _t(decoder.norm.weight))
    (y,) = g.node("SkipSimplifiedLayerNormalization", [mlp, x, w_norm], "/decoder/norm", domain=MS,
                  outputs=["/decoder/norm/out"], epsilon=eps)  # [B, S, D]
    (last,) = g.node("Gather", [y, g.weight("last_row", np.array(-1, np.int64))], "/decoder/last", axis=1)  # [B, D]
    table = decoder.embed_tokens.weight if decoder.lm_head is None else decoder.lm_head.weight
    g.node("Gemm", [last, g.weight("embed_tokens.weight", _t(table))], "/decoder", outputs=[io.LOGITS],
           transB=1)  # [B, V]: the tied table, once (export.precision quantizes it as a MatMul if asked)

    kv_shape = ["batch", hkv, "max_seq", hd]
    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(io.INPUTS_EMBEDS, f32, ["batch", "seq", spec.dim])]
    outputs = [helper.make_tensor_value_info(io.LOGITS, f32, ["batch", spec.vocab_size])]
    for i in range(spec.n_layers):
        inputs += [helper.make_tensor_value_info(n, f32, kv_shape) for n in (io.past_key(i), io.past_value(i))]
        outputs += [helper.make_tensor_value_info(n, f32, kv_shape) for n in (io.present_key(i), io.present_value(i))]
    inputs += [helper.make_tensor_value_info(io.SEQLENS_K, TensorProto.INT32, ["batch"]),
               helper.make_tensor_value_info(io.TOTAL_SEQ_LEN, TensorProto.INT32, [])]
    graph = helper.make_graph(g.nodes, "decoder", inputs, outputs, g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                             producer_name="flash-vl-export")


def export_fused_decoder(model, path: Path) -> GraphSpec:
    """decoder.onnx (+ .data) in the onnxruntime flavour, fp32; its manifest entry."""
    d = model.preset.decoder
    data = path.with_name(path.name + ".data")
    with open(data, "wb") as f:
        proto = build(model.decoder, d, d.max_seq_len, f, data.name)
    onnx.save_model(proto, str(path))  # only the structure: the weights are already in `data`
    return graph_spec(path, flavour="onnxruntime", kv_cache=io.SHARED_BNSH)
