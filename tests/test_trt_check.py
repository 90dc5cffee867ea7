"""export.trt.check without TensorRT: ONNX Runtime stands in for the plans.

The tiny engine gets a hand-built `trt` record (profiles from runtime.trt_profiles, no plan
files); the TensorRT side is an OnnxrtRunner of the folder's own graphs (all must pass) or of
a decoder whose last layer's MLP is broken, standing in for a miscompiled plan (the logits
must fail; every layer's K/V must pass, as K/V come before that MLP).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import subprocess
import pytest

from tests.extras import needs

needs("export")

import onnx
from onnx import numpy_helper

from runtime import graph_io as io
from runtime.files import sha256_of
from runtime.manifest import SCHEMA_VERSION, PlanSpec, TrtSpec, load_manifest, save_manifest
from runtime.trt_profiles import decoder_profiles, vision_profiles
from tests.conftest import assert_one_line_error

MAX_SEQ_LEN = 128


def plan_spec(engine, graph, profiles) -> PlanSpec:
    return PlanSpec(file=graph.file.replace(".onnx", ".plan"), bytes=1, sha256="0" * 64, onnx=graph.file,
                    onnx_sha256=sha256_of(engine / graph.file), precision=graph.precision, profiles=profiles,
                    device_memory=0, build_seconds=0.0, builder_peak_host_bytes=0, builder_peak_device_bytes=-1)


def with_trt_record(src, engine, max_batch=1):
    """A copy of `src` with a `trt` record as `python -m export.trt` would write it, minus the plan files."""
    shutil.copytree(src, engine)
    m = load_manifest(engine)
    g = m.graphs
    tiles = 1 if m.tiling is None else m.tiling.max_tiles + m.tiling.thumbnail
    trt = TrtSpec(tensorrt_version="10.3.0", gpu_name="stand-in (ONNX Runtime)", compute_capability="0.0",
                  max_seq_len=MAX_SEQ_LEN, max_batch=max_batch, vision_max_batch=tiles, workspace_mb=0,
                  low_memory=False, vision=plan_spec(engine, g.vision, vision_profiles(g.vision, tiles)),
                  decoder=plan_spec(engine, g.decoder, decoder_profiles(g.decoder, MAX_SEQ_LEN, max_batch, 64)))
    save_manifest(engine, dataclasses.replace(m, schema_version=SCHEMA_VERSION, trt=trt))
    return engine


@pytest.fixture(scope="module")
def trt_engine(tiny_engine, tmp_path_factory):
    return with_trt_record(tiny_engine, tmp_path_factory.mktemp("trt") / "tiny")


@pytest.fixture(scope="module")
def broken_decoder(trt_engine, tmp_path_factory):
    """decoder.onnx with the last layer's MLP down projection scaled: K/V of earlier layers stay exact."""
    m = load_manifest(trt_engine)
    last = m.decoder.n_layers - 1
    model = onnx.load(str(trt_engine / m.graphs.decoder.file))
    node = next(n for n in model.graph.node if n.name == f"/decoder/layers.{last}/mlp/down_proj/MatMul")
    weights = {i.name: i for i in model.graph.initializer}
    (name,) = [i for i in node.input if i in weights]
    assert sum(name in n.input for n in model.graph.node) == 1, "the weight must feed this MatMul only"
    w = numpy_helper.to_array(weights[name])
    weights[name].CopyFrom(numpy_helper.from_array(-3.0 * w, name))
    path = tmp_path_factory.mktemp("broken") / "decoder.onnx"
    onnx.save(model, str(path))
    return path


def stand_in(engine, decoder=None):
    """A TrtRunnerFor running ONNX Runtime on the folder's graphs (or on `decoder` for decoder.plan)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    def runner_for(plan, profile):
        path = decoder if decoder is not None and plan.onnx.startswith("decoder") else engine / plan.onnx
        return OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]), name="tensorrt")
    return runner_for


def run_main(capsys, argv, trt_runner_for) -> subprocess.CompletedProcess:
    from export.trt.check import main

    rc = main(argv, trt_runner_for=trt_runner_for)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, rc, out.out, out.err)


def test_same_graphs_pass(trt_engine, capsys):
    proc = run_main(capsys, ["--engine", str(trt_engine)], stand_in(trt_engine))
    print(proc.stdout)  # docs/tensorrt-jetson.md's passing example: pytest -s
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n_layers = load_manifest(trt_engine).decoder.n_layers
    assert f"all {1 + 2 * (1 + 2 * n_layers)} outputs within tolerance" in proc.stdout
    assert "FAIL" not in proc.stdout and proc.stdout.count("| agree |") == 2
    assert "| vision.plan | 0 vision | image_embeds | 0.00e+00 | 0.00e+00 | 0.001 / 0.001 | pass |" in proc.stdout


def test_tiled_model_passes(tiny_dynamic_engine, tmp_path, capsys):
    engine = with_trt_record(tiny_dynamic_engine, tmp_path / "tiny-dynamic")
    proc = run_main(capsys, ["--engine", str(engine), "--json"], stand_in(engine))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["prompt_tokens"] > load_manifest(engine).adapter.image_tokens


def test_broken_decoder_fails_on_the_right_outputs(trt_engine, broken_decoder, capsys):
    proc = run_main(capsys, ["--engine", str(trt_engine), "--json"], stand_in(trt_engine, broken_decoder))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["passed"] is False
    verdict = {(o["plan"], o["profile"], o["output"]): o["passed"] for o in report["outputs"]}
    last = load_manifest(trt_engine).decoder.n_layers - 1
    assert verdict[("vision.plan", "0 vision", io.IMAGE_EMBEDS)]
    logits = [o for o in report["outputs"] if o["output"] == io.LOGITS]
    assert len(logits) == 2 and all(o["max_abs"] > 10 * o["atol"] and not o["passed"] for o in logits)
    for profile in ("0 prefill", "1 decode"):
        for i in range(last + 1):  # K/V come before the broken MLP in every layer
            assert verdict[("decoder.plan", profile, io.new_key(i))]
            assert verdict[("decoder.plan", profile, io.new_value(i))]
    assert [t["plan"] for t in report["next_tokens"]] == ["decoder.plan", "decoder.plan"]

    proc = run_main(capsys, ["--engine", str(trt_engine)], stand_in(trt_engine, broken_decoder))
    print(proc.stdout)  # docs/tensorrt-jetson.md's failing example: pytest -s
    assert proc.returncode == 1
    assert "| decoder.plan | 0 prefill | logits |" in proc.stdout and "| FAIL |" in proc.stdout
    n_outputs = 1 + 2 * (1 + 2 * (last + 1))
    assert f"2 of {n_outputs} outputs diverge, first decoder.plan profile 0 prefill logits" in proc.stdout


@pytest.fixture(scope="module")
def batched_engine(tiny_engine, tmp_path_factory):
    return with_trt_record(tiny_engine, tmp_path_factory.mktemp("trt") / "tiny-b3", max_batch=3)


def recorded_cases(monkeypatch) -> list:
    from export.trt import check

    cases, compare = [], check.compare_case
    monkeypatch.setattr(check, "compare_case", lambda case, *a: (cases.append(case), compare(case, *a))[1])
    return cases


def test_decode_case_runs_at_the_plans_batch(batched_engine, broken_decoder, capsys, monkeypatch):
    """The runtime decodes all B slots of a batched plan at once, at their own positions: so does the check."""
    cases = recorded_cases(monkeypatch)
    proc = run_main(capsys, ["--engine", str(batched_engine), "--json"], stand_in(batched_engine))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    decode = cases[-1].feed
    p = report["prompt_tokens"]
    assert decode[io.INPUTS_EMBEDS].shape[:2] == (3, 1) and decode[io.POSITION_IDS][:, 0].tolist() == [p, p - 1, p - 2]
    assert decode[io.past_key(0)].shape[:2] == (p, 3)
    proc = run_main(capsys, ["--engine", str(batched_engine), "--json"], stand_in(batched_engine, broken_decoder))
    assert proc.returncode == 1
    failed = {(o["profile"], o["output"]) for o in json.loads(proc.stdout)["outputs"] if not o["passed"]}
    assert failed == {("0 prefill", io.LOGITS), ("1 decode", io.LOGITS)}


def test_tolerance_override(trt_engine, broken_decoder, capsys):
    proc = run_main(capsys, ["--engine", str(trt_engine), "--atol", "1e6", "--json"],
                    stand_in(trt_engine, broken_decoder))
    assert proc.returncode == 0, proc.stdout
    assert {o["atol"] for o in json.loads(proc.stdout)["outputs"]} == {1e6}


def test_folder_without_plans(tiny_engine, capsys):
    proc = run_main(capsys, ["--engine", str(tiny_engine)], None)
    assert_one_line_error(proc, "no TensorRT plans", f"python -m export.trt --engine {tiny_engine}")


def test_missing_image(trt_engine, tmp_path, capsys):
    proc = run_main(capsys, ["--engine", str(trt_engine), "--image", str(tmp_path / "nope.png")],
                    stand_in(trt_engine))
    assert_one_line_error(proc, "nope.png", "file not found")


def test_stale_plan(trt_engine, tmp_path, capsys):
    engine = tmp_path / "engine"
    shutil.copytree(trt_engine, engine)
    m = load_manifest(engine)
    stale = dataclasses.replace(m.trt.decoder, onnx_sha256="f" * 64)
    save_manifest(engine, dataclasses.replace(m, trt=dataclasses.replace(m.trt, decoder=stale)))
    proc = run_main(capsys, ["--engine", str(engine)], stand_in(engine))
    assert_one_line_error(proc, "decoder.plan was built from decoder.onnx", "python -m export.trt --engine")


def test_prompt_longer_than_the_profiles(trt_engine, capsys):
    proc = run_main(capsys, ["--engine", str(trt_engine), "--prompt", "word " * MAX_SEQ_LEN], stand_in(trt_engine))
    assert_one_line_error(proc, "outside the 'prefill' profile", "--max-seq-len")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_tensorrt_missing(trt_engine, capsys):
    proc = run_main(capsys, ["--engine", str(trt_engine)], None)
    assert_one_line_error(proc, "tensorrt", "python3-libnvinfer", "pip install tensorrt")


def test_argmax_rows_follow_the_logits(trt_engine, capsys):
    proc = run_main(capsys, ["--engine", str(trt_engine)], stand_in(trt_engine))
    lines = proc.stdout.splitlines()
    for i, line in enumerate(lines):
        if "| logits |" in line:
            assert "next token (argmax)" in lines[i + 1]
    assert sum("next token" in line for line in lines) == 2
