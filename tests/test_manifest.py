"""The manifest is written once and read strictly; every graph matches its I/O table."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tests.extras import needs

needs("export")

import onnx
import onnx.numpy_helper
import onnxruntime as ort

from runtime import graph_io as io
from runtime.errors import EngineError
from runtime.manifest import SCHEMA_VERSION, load_manifest, parse_manifest


def test_round_trip(tiny_engine):
    m = load_manifest(tiny_engine)
    assert parse_manifest(json.loads(m.to_json())) == m
    assert m.schema_version == SCHEMA_VERSION
    assert m.source.kind == "random" and m.source.seed == 0
    assert {f.path for f in m.files} == {"vision.onnx", "vision.onnx.data", "decoder.onnx", "decoder.onnx.data",
                                         "embed_tokens.npy", "tokenizer.json"}
    assert all(f.bytes > 0 and len(f.sha256) == 64 for f in m.files)


def test_every_graph_matches_the_manifest(tiny_engine):
    m = load_manifest(tiny_engine)
    d = m.decoder
    for spec in (m.graphs.vision, m.graphs.decoder):
        proto = onnx.load(str(tiny_engine / spec.file), load_external_data=False)
        assert [i.name for i in proto.graph.input] == [t.name for t in spec.inputs]
        assert [o.name for o in proto.graph.output] == [t.name for t in spec.outputs]
        sess = ort.InferenceSession(str(tiny_engine / spec.file), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == [t.name for t in spec.inputs]
    assert [t.name for t in m.graphs.decoder.inputs] == io.decoder_input_names(d.n_layers)
    assert [t.name for t in m.graphs.decoder.outputs] == io.decoder_output_names(d.n_layers)
    assert m.graphs.vision.output(io.IMAGE_EMBEDS).shape == ("batch", m.adapter.image_tokens, d.dim)
    assert m.graphs.vision.input(io.PIXEL_VALUES).shape == ("batch", 3, m.preprocess.height, m.preprocess.width)
    assert m.graphs.decoder.input(io.past_key(0)).shape == ("past_seq", "batch", d.n_kv_heads, d.head_dim)
    assert m.graphs.decoder.output(io.new_value(d.n_layers - 1)).shape == ("seq", "batch", d.n_kv_heads, d.head_dim)
    assert m.graphs.decoder.output(io.LOGITS).shape == ("batch", d.vocab_size)


def test_tied_embeddings_are_one_table_in_the_graph_and_the_runtime_maps_its_file(tiny_engine):
    m = load_manifest(tiny_engine)
    proto = onnx.load(str(tiny_engine / m.graphs.decoder.file))
    shape = [m.decoder.vocab_size, m.decoder.dim]
    tables = [t for t in proto.graph.initializer if list(t.dims) in (shape, shape[::-1])]
    assert len(tables) == 1  # the logits Gemm's; no Gather copy
    assert [n.op_type for n in proto.graph.node if tables[0].name in n.input] == ["Gemm"]
    assert not [n for n in proto.graph.node if n.op_type == "Gather" and tables[0].name in n.input]
    table = np.load(tiny_engine / m.embeddings.file, mmap_mode="r")
    assert isinstance(table, np.memmap) and list(table.shape) == shape
    np.testing.assert_array_equal(np.asarray(table), onnx.numpy_helper.to_array(tables[0]))
    from runtime import FlashVL
    assert isinstance(FlashVL.load(tiny_engine).embed.table, np.memmap)  # paged in row by row, never copied


def _damaged(tiny_engine, tmp_path, edit):
    raw = json.loads((tiny_engine / "manifest.json").read_text())
    edit(raw)
    d = tmp_path / "e"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps(raw))
    return d


@pytest.mark.parametrize("edit,needle", [
    (lambda r: r.update(schema_version=99), "schema version 99"),
    (lambda r: r.pop("schema_version"), "schema version None"),
    (lambda r: r["decoder"].update(n_layers="2"), "decoder.n_layers: expected an integer"),
    (lambda r: r["decoder"].update(colour="red"), "unknown keys ['colour']"),
    (lambda r: r["vision"].pop("patch_size"), "missing key 'patch_size'"),
    (lambda r: r["decoder"].update(kv_layout="head_major"), "kv_layout must be one of"),
    (lambda r: r["graphs"]["vision"].update(precision="int3"), "precision must be one of"),
    (lambda r: r["tokens"].update(stop_ids=[1, "x"]), "stop_ids[1]: expected an integer"),
])
def test_strict_reading(tiny_engine, tmp_path, edit, needle):
    with pytest.raises(EngineError) as e:
        load_manifest(_damaged(tiny_engine, tmp_path, edit))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_not_json(tmp_path):
    (tmp_path / "manifest.json").write_text("{nope")
    with pytest.raises(EngineError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_spec_validation_messages():
    from export.presets import get_preset
    v = get_preset("tiny").vision
    with pytest.raises(EngineError, match="not a multiple of patch_size"):
        dataclasses.replace(v, image_size=65)


def test_embedding_table_that_disagrees_with_the_manifest(tiny_engine, tmp_path):
    from runtime.embedding import TokenEmbedding
    m = load_manifest(tiny_engine)
    np.save(tmp_path / "t.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(EngineError, match=r"float32\[3, 4\], manifest.json says float32\[640, 64\]"):
        TokenEmbedding(tmp_path / "t.npy", m.embeddings, m.tokens.image_pad_id)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(EngineError, match="not a readable .npy"):
        TokenEmbedding(tmp_path / "bad.npy", m.embeddings, m.tokens.image_pad_id)


def test_graphs_have_hierarchical_names_and_no_local_paths(tiny_engine):
    from tests.conftest import ROOT
    m = load_manifest(tiny_engine)
    for spec, root in ((m.graphs.vision, "/vision"), (m.graphs.decoder, "/decoder")):
        raw = (tiny_engine / spec.file).read_bytes()
        assert str(ROOT).encode() not in raw  # no stack traces with this checkout's paths
        proto = onnx.load(str(tiny_engine / spec.file), load_external_data=False)
        names = [n.name for n in proto.graph.node]
        assert len(set(names)) == len(names) and all(n.startswith(root + "/") for n in names)
        assert not any(n.metadata_props for n in proto.graph.node)
    dec = onnx.load(str(tiny_engine / m.graphs.decoder.file), load_external_data=False)
    assert "/decoder/layers.1/self_attn/q_proj/MatMul" in {n.name for n in dec.graph.node}


def test_graphs_use_standard_onnx_ops_only(tiny_engine):
    """No contrib (com.microsoft) or custom ops: the same graphs must load in TensorRT's ONNX parser."""
    m = load_manifest(tiny_engine)
    for spec in (m.graphs.vision, m.graphs.decoder):
        proto = onnx.load(str(tiny_engine / spec.file), load_external_data=False)
        assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
        assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
        assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
        onnx.checker.check_model(str(tiny_engine / spec.file), full_check=True)
