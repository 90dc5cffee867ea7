"""The onnxruntime flavour's fused decoder (export.fused_decoder): what it is made of, what it computes,
and how the manifest and the runtime bind its shared KV cache.  Greedy parity with the PyTorch
reference is in tests/test_runtime_parity.py (both graphs); quantized accuracy in tests/test_precision.py."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest

from tests.extras import needs

needs("export")

import onnx
import torch

from export.fused_decoder import rope_tables
from export.decoder import rope_cos_sin
from export.reference import rebuild
from runtime import FlashVL
from runtime import graph_io as io
from runtime.errors import EngineError
from runtime.manifest import load_manifest
from tests.conftest import run_cli

FUSED_OPS = {"SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "MatMul", "Add",
             "GroupQueryAttention", "Sigmoid", "Mul", "Gather", "Gemm"}


def test_manifest_records_the_shared_cache(tiny_fused_engine, tiny_engine):
    m = load_manifest(tiny_fused_engine)
    d = m.graphs.decoder
    assert (m.schema_version, d.flavour, d.kv_cache, d.precision, d.weights) == (5, "onnxruntime", "shared_bnsh",
                                                                                 "fp32", None)
    assert d.input(io.past_key(0)).shape == ("batch", m.decoder.n_kv_heads, "max_seq", m.decoder.head_dim)
    assert (d.input(io.SEQLENS_K).dtype, d.input(io.TOTAL_SEQ_LEN).shape) == ("int32", ())
    assert d.output(io.present_value(1)).shape == d.input(io.past_value(1)).shape
    assert load_manifest(tiny_engine).graphs.decoder.kv_cache == "seq_major"
    with pytest.raises(EngineError, match="kv_cache shared_bnsh is the onnxruntime flavour's"):
        dataclasses.replace(d, flavour="standard")


def test_graph_is_a_dozen_fused_nodes_a_layer(tiny_fused_engine):
    proto = onnx.load(str(tiny_fused_engine / "decoder.onnx"), load_external_data=False)
    n_layers = load_manifest(tiny_fused_engine).decoder.n_layers
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert set(ops) == FUSED_OPS
    assert ops["GroupQueryAttention"] == n_layers and ops["SkipSimplifiedLayerNormalization"] == 2 * n_layers
    assert len(proto.graph.node) == 12 * n_layers + 3  # + the final norm, the last-row Gather, the logits Gemm
    assert sum(1 for t in proto.graph.initializer if len(t.dims) == 2 and "embed_tokens" in t.name) == 1


def test_rope_tables_equal_the_pytorch_rotary(tiny_fused_engine):
    spec = load_manifest(tiny_fused_engine).decoder
    cos, sin = rope_tables(spec, 64)  # [64, hd/2]
    tc, ts = rope_cos_sin(torch.arange(64)[None], spec.head_dim, spec.rope_theta)  # [1, 64, 1, hd]
    np.testing.assert_allclose(cos, tc[0, :, 0, : spec.head_dim // 2].numpy(), rtol=0, atol=1.2e-7)  # ≤ 1 ulp
    np.testing.assert_allclose(sin, ts[0, :, 0, : spec.head_dim // 2].numpy(), rtol=0, atol=1.2e-7)


@pytest.mark.parametrize("max_seq_len,min_rows,rows", [(None, 512, 256), (40, 4, 36)])
def test_logits_and_cache_match_pytorch_step_by_step(tiny_fused_engine, monkeypatch, max_seq_len, min_rows, rows):
    """Prefill then single steps through the runtime's decoder: a cache of the graph's whole context, and one
    that starts at 4 rows and grows as the positions need (4 -> 9 -> 18 -> 36, its contents kept)."""
    import runtime.ort_backend as ob

    monkeypatch.setattr(ob, "SHARED_MIN_ROWS", min_rows)
    vl = FlashVL.load(tiny_fused_engine, max_seq_len=max_seq_len)
    dec = rebuild(vl.manifest).decoder
    rng = np.random.default_rng(3)
    prompt = rng.standard_normal((1, 9, vl.manifest.decoder.dim)).astype(np.float32)
    logits = vl.decoder.forward(prompt, 0).copy()
    with torch.no_grad():
        ref, *past = dec(torch.from_numpy(prompt), torch.arange(9)[None], *dec.empty_past())
    assert np.abs(logits - ref.numpy()).max() <= 1e-4
    for pos in range(9, 20):  # the growing cache doubles at 9 and at 18
        x = rng.standard_normal((1, 1, vl.manifest.decoder.dim)).astype(np.float32)
        logits = vl.decoder.forward(x, pos).copy()
        with torch.no_grad():
            ref, *new = dec(torch.from_numpy(x), torch.tensor([[pos]]), *past)
        past = [torch.cat((p, n)) for p, n in zip(past, new)]
        assert np.abs(logits - ref.numpy()).max() <= 1e-4
    assert vl.decoder.cache.shape[4] == rows
    for layer in (0, vl.manifest.decoder.n_layers - 1):
        for kv in (0, 1):
            held = vl.decoder.cache[layer, kv].transpose(2, 0, 1, 3)[:20]  # [20, B, Hkv, hd]
            np.testing.assert_allclose(held, past[2 * layer + kv].numpy(), atol=1e-4)
    assert not vl.decoder.cache[:, :, :, :, 20:].any()  # nothing written past the last position


def test_fp16_decoder_cannot_be_fused(tmp_path):
    p = run_cli("-m", "export", "--preset", "tiny", "--random-weights", "--out", str(tmp_path / "x"),
                "--precision", "fp16", "--flavour", "onnxruntime")
    assert p.returncode == 2 and "--flavour onnxruntime" in p.stderr and "fp32/int8/int4" in p.stderr


def test_schema_3_folders_load_as_seq_major(tiny_engine, tiny_fused_engine, tmp_path):
    """Before schema 4 there was no kv_cache key: such decoders are seq-major; a v3 file claiming a shared cache
    is refused."""
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_engine, old)
    raw = json.loads((old / "manifest.json").read_text())
    raw["schema_version"] = 3
    for g in raw["graphs"].values():
        if g is not None:
            g.pop("kv_cache")
            g.pop("max_batch")
    (old / "manifest.json").write_text(json.dumps(raw))
    assert load_manifest(old).graphs.decoder.kv_cache == "seq_major"
    raw = json.loads((tiny_fused_engine / "manifest.json").read_text())
    raw["schema_version"] = 3
    (old / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(EngineError, match="schema 3 has seq-major decoders only"):
        load_manifest(old)
