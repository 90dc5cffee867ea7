"""Reduced precision at the tiny preset: what each export writes, that it runs, and how far it drifts.

Every precision is exported from the same seeded weights as the fp32 `tiny_engine` and measured
against it with `calib.report.compare` (ONNX Runtime on both sides) over the project's own
calibration images.  Thresholds, and why (measured values in brackets, 8 images x 3 prompts):

    fp16   per-position top-1 >= 98% [99.8%], whole 8-token greedy output equal on >= 85% [97%]
    int8   vision cosine >= 0.999 [0.9997], top-1 >= 85% [90%], first greedy token equal on >= 75%
           [87%]: the tiny random model's top-2 logit margins are often smaller than int8 weight
           noise, so whole sequences diverge after a few tokens (KL stays ~6e-3 nats)
    int4   far above chance (1/640): top-1 >= 20% [30-39%], KL <= 1.0 nats [0.4-0.6]; tiny's
           64-wide layers with init std 0.25 are the worst case for 15-level weights
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.extras import needs

needs("export")

import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from calib.calibrate import DEFAULT_IMAGES
from calib.report import compare
from export.precision import dequantize, plan_from_args, quantize_symmetric
from export.trt_lint import lint_file
from runtime import FlashVL
from runtime.backend import Capabilities, check_supported
from runtime.errors import EngineError, FlashVLError
from runtime.manifest import PRECISIONS, load_manifest
from tests.conftest import PRECISION_PLANS as PLANS
from tests.conftest import assert_one_line_error, run_cli

@pytest.fixture(scope="session")
def drift(precision_engines, tiny_engine):
    return {name: compare(path, tiny_engine, DEFAULT_IMAGES, 8, 3, 8, None) for name, path in precision_engines.items()}


# ----------------------------------------------------------------------------- what is written


def test_manifest_records_each_graph(precision_engines):
    m = {k: load_manifest(v) for k, v in precision_engines.items()}
    assert (m["fp16"].graphs.vision.precision, m["fp16"].graphs.decoder.precision) == ("fp16", "fp16")
    assert m["fp16"].graphs.decoder.input("past_key.0").dtype == "float16"  # the KV cache halves
    assert m["fp16"].graphs.decoder.output("logits").dtype == "float32"
    v8, d8 = m["int8"].graphs.vision, m["int8"].graphs.decoder
    assert (v8.precision, v8.file, v8.activations.method, v8.activations.images) == (
        "int8", "vision.int8.onnx", "percentile", 12)
    assert m["int8"].graphs.vision_fp32.file == "vision.onnx"
    assert (d8.weights.bits, d8.weights.block_size, d8.weights.format, d8.flavour) == (8, 0, "qdq", "standard")
    d4 = m["int4"].graphs.decoder
    n_linear = 7 * m["int4"].decoder.n_layers  # q k v o gate up down
    assert (d4.weights.bits, d4.weights.block_size, d4.weights.layers, d4.opset) == (4, 32, n_linear, 21)
    o4 = m["int4-ort"].graphs.decoder  # the fused graph: one qkv projection a layer
    assert (o4.flavour, o4.weights.format, o4.weights.lm_head, o4.weights.layers, o4.kv_cache) == (
        "onnxruntime", "matmul_nbits", True, 5 * m["int4"].decoder.n_layers + 1, "shared_bnsh")
    listed = {f.path for f in m["int8"].files}
    assert {"vision.int8.onnx", "vision.int8.onnx.data", "calibration.json", "calibration.cache",
            "vision.onnx"} <= listed


def test_w4a16_quantizes_the_fp16_graph(precision_engines):
    """--compute fp16: int4 weights dequantize to fp16 (fp16 scales), fp16 KV cache, fp32 logits."""
    d = load_manifest(precision_engines["int4-fp16"]).graphs.decoder
    assert (d.precision, d.weights.compute, d.weights.lm_head) == ("int4", "fp16", False)
    assert d.input("past_key.0").dtype == "float16" and d.output("logits").dtype == "float32"
    proto = onnx.load(str(precision_engines["int4-fp16"] / "decoder.onnx"), load_external_data=False)
    inits = {t.name: t for t in proto.graph.initializer}
    dqs = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == d.weights.layers
    assert {(inits[n.input[0]].data_type, inits[n.input[1]].data_type) for n in dqs} == {
        (onnx.TensorProto.INT4, onnx.TensorProto.FLOAT16)}
    assert load_manifest(precision_engines["int4"]).graphs.decoder.weights.compute == "fp32"


def test_w4a16_stays_close_to_w4a32(precision_engines):
    """fp16 activations on top of the same int4 weights move the logits little."""
    r = compare(precision_engines["int4-fp16"], precision_engines["int4"], DEFAULT_IMAGES, 6, 2, 8, None)
    assert r.top1_agreement >= 0.9 and r.kl_mean <= 0.05, r


def test_fp16_keeps_statistics_and_logits_in_fp32(precision_engines):
    proto = onnx.shape_inference.infer_shapes(
        onnx.load(str(precision_engines["fp16"] / "decoder.onnx"), load_external_data=False))
    types = {v.name: v.type.tensor_type.elem_type for v in (*proto.graph.value_info, *proto.graph.input,
                                                            *proto.graph.output)}
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    kept = [n for n in proto.graph.node if n.op_type in ("Softmax", "ReduceMean", "Cos", "Sin")]
    assert kept and all(types[n.input[0]] == f32 for n in kept)
    matmul_weights = {t.name: t.data_type for t in proto.graph.initializer}
    linear = [n for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in matmul_weights]
    assert linear and all(matmul_weights[n.input[1]] == f16 for n in linear)
    assert types["logits"] == f32 and types["past_key.0"] == f16


def test_quantized_weights_are_symmetric(precision_engines):
    proto = onnx.load(str(precision_engines["int4"] / "decoder.onnx"), load_external_data=False)
    dqs = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    inits = {t.name: t for t in proto.graph.initializer}
    assert len(dqs) == load_manifest(precision_engines["int4"]).graphs.decoder.weights.layers
    for n in dqs:
        assert len(n.input) == 2  # no zero point: 0
        assert inits[n.input[0]].data_type == onnx.TensorProto.INT4
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs == {"axis": 0, "block_size": 32}
        assert n.name.endswith("/DequantizeLinear") and n.name.startswith("/decoder/layers.")


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.sampled_from([32, 64, 96]), st.integers(1, 8)),
              elements=st.floats(-4, 4, width=32)),
       st.sampled_from([(8, 0), (4, 32), (4, 16), (8, 32)]))
def test_quantize_symmetric_round_trip(w, bits_block):
    bits, block = bits_block
    q, scale = quantize_symmetric(w, bits, block)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == np.int8 and np.abs(q).max(initial=0) <= qmax
    back = dequantize(q, scale, block)  # [K, N]
    step = scale[None, :] if block == 0 else np.repeat(scale, block, axis=0)
    assert np.all(np.abs(back - w) <= step / 2 + 1e-6 * np.abs(w) + 1e-12)


def test_every_standard_graph_passes_the_tensorrt_lint(precision_engines, tiny_engine):
    files = [tiny_engine / "vision.onnx", tiny_engine / "decoder.onnx"]
    for name in ("fp16", "int8", "int4", "int4-fp16"):
        m = load_manifest(precision_engines[name])
        files += [precision_engines[name] / m.graphs.vision.file, precision_engines[name] / m.graphs.decoder.file]
    for f in files:
        assert lint_file(f) == [], f
    problems = lint_file(precision_engines["int4-ort"] / "decoder.onnx")  # the fused onnxruntime graph
    assert problems and any("com.microsoft" in p and "--flavour standard" in p for p in problems)
    assert all("com.microsoft" in p or "op not supported by the TensorRT 10.3 ONNX parser" in p for p in problems)


def test_calibration_record_and_tensorrt_cache_agree(precision_engines):
    d = precision_engines["int8"]
    record = json.loads((d / "calibration.json").read_text())
    assert record["method"] == "percentile" and record["images"]["used"] == 12
    assert len(record["images"]["decoded_rgb_sha256"]) == 12
    lines = (d / "calibration.cache").read_text().splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    cache = {}
    for line in lines[1:]:
        name, hexscale = line.split(": ")
        cache[name] = struct.unpack(">f", bytes.fromhex(hexscale))[0]
    assert set(cache) == set(record["ranges"]) and "pixel_values" in cache
    for name, (lo, hi) in record["ranges"].items():
        assert cache[name] == pytest.approx(max(abs(lo), abs(hi)) / 127, rel=1e-6)
    # the QDQ graph quantizes its input with the very scale the cache gives TensorRT
    proto = onnx.load(str(d / "vision.int8.onnx"))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "pixel_values")
    assert float(inits[q.input[1]]) == pytest.approx(cache["pixel_values"], rel=1e-5)
    zero_points = [inits[n.input[2]] for n in proto.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)


# ----------------------------------------------------------------------------- drift


def test_fp16_agrees(drift):
    r = drift["fp16"]
    assert r.vision_cos_min >= 0.9999 and r.top1_agreement >= 0.98 and r.exact_match >= 0.85, r


def test_int8_agrees(drift):
    r = drift["int8"]
    assert r.vision_cos_mean >= 0.999 and r.top1_agreement >= 0.85 and r.first_token >= 0.75, r
    assert r.kl_mean <= 0.02, r


@pytest.mark.parametrize("name", ["int4", "int4-ort", "int4-fp16"])
def test_int4_is_far_above_chance(drift, name):
    r = drift[name]
    assert r.top1_agreement >= 0.2 and r.kl_mean <= 1.0, r


@pytest.mark.parametrize("name", list(PLANS))
def test_each_precision_generates(precision_engines, name):
    vl = FlashVL.load(precision_engines[name])
    result = vl.generate(str(DEFAULT_IMAGES / "shapes_flat.png"), "Describe the image.", max_new_tokens=6)
    assert len(result.token_ids) >= 1 and result.prompt_tokens > result.image_tokens > 0


def test_dynamic_engine_calibrates_on_tiles(tiny_dynamic_engine, tmp_path):
    d = tmp_path / "dyn"
    shutil.copytree(tiny_dynamic_engine, d)
    p = run_cli("-m", "calib", "--engine", str(d), "--max", "4", "--method", "minmax")
    assert p.returncode == 0, p.stderr
    m = load_manifest(d)
    assert m.graphs.vision.precision == "int8" and m.graphs.vision.activations.method == "minmax"
    result = FlashVL.load(d).generate(str(DEFAULT_IMAGES / "chart_bars.png"), "Describe.", max_new_tokens=4)
    assert result.tiling["tiles"] > 1


# ----------------------------------------------------------------------------- bad input


def test_recalibrating_keeps_the_fp32_source(precision_engines, tmp_path):
    d = tmp_path / "e"
    shutil.copytree(precision_engines["int8"], d)
    p = run_cli("-m", "calib", "--engine", str(d), "--max", "3", "--method", "minmax")
    assert p.returncode == 0, p.stderr
    assert "only 3 calibration images" in p.stderr  # too few: a warning, not an error
    m = load_manifest(d)
    assert (m.graphs.vision.activations.method, m.graphs.vision.activations.images) == ("minmax", 3)
    assert m.graphs.vision_fp32.file == "vision.onnx"
    FlashVL.load(d)  # hashes of the rewritten folder verify


def test_calibration_bad_inputs(precision_engines, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("-m", "calib", "--engine", str(precision_engines["int8"]), "--images", str(empty)),
                          str(empty), "no image files")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in sorted(DEFAULT_IMAGES.glob("*.png"))[:2]:
        shutil.copy(f, mixed / f.name)
    (mixed / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    d = tmp_path / "e"
    shutil.copytree(precision_engines["int8"], d)
    p = run_cli("-m", "calib", "--engine", str(d), "--images", str(mixed))
    assert p.returncode == 0, p.stderr
    assert load_manifest(d).graphs.vision.activations.images == 2
    assert "broken.jpg" in json.loads((d / "calibration.json").read_text())["images"]["skipped"][0]["name"]
    assert_one_line_error(run_cli("-m", "calib", "--engine", str(precision_engines["fp16"])),
                          "no fp32 vision graph", "--vision-precision")


@pytest.mark.parametrize("args, needles", [
    (["--vision-precision", "int4"], ["vision precision 'int4'", "int8"]),
    (["--precision", "fp16", "--flavour", "onnxruntime"], ["--flavour onnxruntime", "fp32/int8/int4"]),
    (["--precision", "int8", "--block-size", "32"], ["per channel", "--block-size 0"]),
    (["--precision", "int4", "--block-size", "24"], ["power of two"]),
    (["--quantize-lm-head"], ["--quantize-lm-head needs"]),
    (["--precision", "fp16", "--compute", "fp16"], ["--compute fp16", "fp16 standard decoder"]),
    (["--precision", "int4", "--flavour", "onnxruntime", "--compute", "fp16"], ["--compute fp16", "onnxruntime"]),
])
def test_export_refuses_impossible_precision(tmp_path, args, needles):
    p = run_cli("-m", "export", "--preset", "tiny", "--random-weights", "--out", str(tmp_path / "x"), *args)
    assert_one_line_error(p, *needles)
    assert not (tmp_path / "x").exists()  # refused before any work


def test_export_checks_calibration_images_first(tmp_path):
    p = run_cli("-m", "export", "--preset", "tiny", "--random-weights", "--precision", "int8",
                "--calib-images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert_one_line_error(p, "nowhere")
    assert not (tmp_path / "x").exists()


def test_backend_refuses_what_it_cannot_run(precision_engines):
    spec = load_manifest(precision_engines["int4-ort"]).graphs.decoder
    standard_only = Capabilities("tensorrt", flavours=("standard",), precisions=PRECISIONS)
    with pytest.raises(EngineError, match=r"'onnxruntime' flavour .* re-export with `--flavour standard`"):
        check_supported(standard_only, "decoder", spec, precision_engines["int4-ort"])
    no_int4 = Capabilities("cpu-fp", flavours=("standard", "onnxruntime"), precisions=("fp32", "fp16"))
    with pytest.raises(EngineError, match=r"is int4, .* `--decoder-precision fp32`"):
        check_supported(no_int4, "decoder", spec, precision_engines["int4-ort"])


def test_report_cli_and_mismatched_models(precision_engines, tiny_engine, tiny_dynamic_engine):
    p = run_cli("-m", "calib.report", "--engine", str(precision_engines["fp16"]), "--against", str(tiny_engine),
                "--images", str(DEFAULT_IMAGES / "shapes_flat.png"), "--prompts", "1", "--new-tokens", "4")
    assert p.returncode == 0, p.stderr
    assert "| vision | fp16 (standard) | image-embedding cosine" in p.stdout and "greedy exact match" in p.stdout
    p = run_cli("-m", "calib.report", "--engine", str(tiny_dynamic_engine), "--against", str(tiny_engine),
                "--images", str(DEFAULT_IMAGES), "--max", "1")
    assert_one_line_error(p, "different models")


def test_plan_precedence():
    p = plan_from_args("int4", None, None)
    assert (p.vision, p.decoder) == ("int8", "int4")
    p = plan_from_args("int8", "fp16", None)
    assert (p.vision, p.decoder, p.weight_block) == ("fp16", "int8", 0)
    assert plan_from_args("int8", None, None, flavour="onnxruntime").weight_block == 32
    with pytest.raises(FlashVLError):
        plan_from_args(None, None, "int3")


# ----------------------------------------------------------------------------- Polygraphy


def test_polygraphy_finds_nothing_left_to_fold(precision_engines, tiny_engine):
    from polygraphy.backend.onnx import FoldConstants, OnnxFromPath

    for d in (tiny_engine, *precision_engines.values()):
        m = load_manifest(d)
        for spec in (m.graphs.vision, m.graphs.decoder):
            before = onnx.load(str(d / spec.file), load_external_data=False)
            folded = FoldConstants(OnnxFromPath(str(d / spec.file)))()
            assert len(folded.graph.node) == len(before.graph.node), (d, spec.file)


def test_drift_localizes_the_first_quantized_layer(precision_engines, tiny_engine, tmp_path):
    from calib.drift import drift

    image = DEFAULT_IMAGES / "street_day.jpg"
    rows = drift(precision_engines["int8"], tiny_engine, "vision", image, "Describe.", tmp_path / "in.json")
    assert len(rows) > 50
    first = next(r for r in rows if r.cosine < 1 - 1e-6)
    assert "embeddings" in first.node or "layers.0" in first.node  # the patch Conv or layer 0's first linear
    assert min(r.cosine for r in rows) > 0.99
    same = drift(tiny_engine, tiny_engine, "decoder", image, "Describe.", None)
    assert same and all(r.cosine > 1 - 1e-9 and r.rel_max == 0 for r in same)
    # the saved feed is Polygraphy's own format: its CLI loads it
    cli = Path(sys.executable).parent / "polygraphy"  # the console script installed with the package
    p = subprocess.run([str(cli), "run", str(tiny_engine / "vision.onnx"), "--onnxrt", "--load-inputs",
                        str(tmp_path / "in.json")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "PASSED" in p.stdout + p.stderr, p.stdout + p.stderr
