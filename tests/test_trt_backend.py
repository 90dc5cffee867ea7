"""The TensorRT builder and backend, run on stand-ins (tests/trt_standin.py) where TensorRT is absent.

The stand-in runs the real ONNX graphs with ONNX Runtime at the addresses the backend binds, so
these tests check the backend's own logic with real numerics: profiles, buffers, binding by
name, the device-resident KV cache, CUDA graph replay, plan/machine checks and the backend
choice.  Greedy tokens through it must equal the ONNX Runtime backend's, token for token.
What needs a real GPU and TensorRT is in tests/test_cuda_mem.py (skipped without a GPU).
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from tests.extras import needs

needs("export")

from runtime import graph_io as io
from runtime.api import FlashVL
from runtime.backend_select import BackendChoice, decide, plan_mismatch
from runtime.errors import EngineError
from runtime.manifest import DecoderSpec, load_manifest, save_manifest
from runtime.trt_profiles import DECODE, PREFILL, check_shape, decoder_call, decoder_profiles
from tests import trt_standin
from tests.conftest import ROOT, assert_one_line_error, run_cli

IMAGES = [ROOT / "samples" / "shapes.png", None]
PROMPT = "Describe the image."


def build(engine_dir, **cfg):
    from export.trt.build import BuildConfig, build_plans

    return build_plans(engine_dir, BuildConfig(**cfg))


@pytest.fixture(scope="module")
def planned(tiny_engine, tmp_path_factory):
    """A copy of the tiny engine with stand-in plans built (TensorRT 10.3.0, 'Stand-in Orin')."""
    dst = tmp_path_factory.mktemp("trt") / "tiny"
    shutil.copytree(tiny_engine, dst)
    with pytest.MonkeyPatch.context() as mp:
        fake, _ = trt_standin.install(mp)
        build(dst)
        assert len(fake.builds) == 2
    return dst


@pytest.fixture(scope="module")
def planned_dynamic(tiny_dynamic_engine, tmp_path_factory):
    """The tiny dynamic (AIMv2 + ISS) engine with plans whose vision profile takes 2 tiles per run."""
    dst = tmp_path_factory.mktemp("trt") / "tiny-dynamic"
    shutil.copytree(tiny_dynamic_engine, dst)
    with pytest.MonkeyPatch.context() as mp:
        trt_standin.install(mp)
        build(dst, vision_max_batch=2)
    return dst


@pytest.fixture(scope="module")
def planned_aligned(tmp_path_factory):
    """A tiny variant whose cache rows are 256 bytes (2 KV heads x 32 x f32): new K/V written in place.

    The tiny presets' 128-byte rows take the staging path instead (TensorRT wants 256-byte aligned
    addresses), so between them both ways of writing the cache run.
    """
    from export.build import WeightSource, export_engine
    from export.presets import get_preset

    tiny = get_preset("tiny")
    preset = dataclasses.replace(tiny, decoder=dataclasses.replace(tiny.decoder, n_heads=2, head_dim=32))
    dst = tmp_path_factory.mktemp("trt") / "aligned"
    export_engine(preset, WeightSource(seed=0), dst)
    with pytest.MonkeyPatch.context() as mp:
        trt_standin.install(mp)
        build(dst)
    return dst


def greedy(engine_dir, backend, image, **load):
    with FlashVL.load(engine_dir, backend=backend, **load) as vl:
        return vl.generate(None if image is None else str(image), PROMPT, max_new_tokens=24).token_ids


# ----------------------------------------------------------------------------- pure planning


@settings(max_examples=40, deadline=None)
@given(layers=st.integers(1, 4), kv=st.integers(1, 3), hd=st.sampled_from([2, 4, 8]), t=st.integers(2, 40),
       b=st.integers(1, 3), itemsize=st.sampled_from([2, 4]), data=st.data())
def test_decoder_call_offsets_are_numpy_offsets(layers, kv, hd, t, b, itemsize, data):
    dec = DecoderSpec("qwen2", layers, kv * hd * 2, kv * 2, kv, hd, 8, 1e-6, 1e4, 32, True, t, "seq_major")
    seq = data.draw(st.integers(1, t))
    pos = data.draw(st.integers(0, t - seq))
    cache = np.zeros((layers, 2, t, b, kv, hd), np.float16 if itemsize == 2 else np.float32)  # [L, 2, T, B, H, hd]
    call = decoder_call(dec, t, b, itemsize, seq, pos)
    assert call.profile == (DECODE if seq == 1 else PREFILL)
    for i in range(layers):
        for j, (past, new) in enumerate(((io.past_key(i), io.new_key(i)), (io.past_value(i), io.new_value(i)))):
            assert call.offsets[past] == cache[i, j, 0].ctypes.data - cache.ctypes.data
            assert call.offsets[new] == cache[i, j, pos].ctypes.data - cache.ctypes.data
            assert call.shapes[past] == (pos, b, kv, hd)
    assert call.shapes[io.INPUTS_EMBEDS] == (b, seq, dec.dim)


def test_decoder_call_refuses_overflow(tiny_engine):
    dec = load_manifest(tiny_engine).decoder
    with pytest.raises(EngineError, match="does not fit the 16-row KV cache"):
        decoder_call(dec, 16, 1, 4, 4, 13)


def test_profiles_cover_prefill_and_decode(tiny_engine):
    m = load_manifest(tiny_engine)
    prefill, decode = decoder_profiles(m.graphs.decoder, 64, 1, 30)
    assert prefill.shape(io.INPUTS_EMBEDS).max == (1, 64, m.decoder.dim)
    assert decode.shape(io.INPUTS_EMBEDS).max == (1, 1, m.decoder.dim)
    assert decode.shape(io.past_key(0)).max == (63, 1, m.decoder.n_kv_heads, m.decoder.head_dim)
    with pytest.raises(EngineError, match=r"outside the 'decode' profile .*--max-seq-len"):
        check_shape(decode, io.INPUTS_EMBEDS, (1, 2, m.decoder.dim), "decoder.plan")


# ----------------------------------------------------------------------------- builder


def test_build_records_plans_in_manifest(planned):
    m = load_manifest(planned)
    t = m.trt
    assert (t.tensorrt_version, t.gpu_name, t.compute_capability) == ("10.3.0", "Stand-in Orin", "8.7")
    assert t.max_seq_len == m.decoder.max_seq_len and t.vision_max_batch == 1
    assert [p.name for p in t.decoder.profiles] == ["prefill", "decode"]
    assert t.decoder.onnx == m.graphs.decoder.file and t.decoder.builder_peak_host_bytes > 0
    assert (planned / "vision.plan").stat().st_size == t.vision.bytes
    assert (planned / "timing.cache").read_bytes().startswith(b"STANDIN-TIMING-CACHE")
    assert plan_mismatch(planned, m, "10.3.0", "Stand-in Orin", "8.7") == ""


def test_build_settings_reach_tensorrt(engine_copy, monkeypatch):
    fake, _ = trt_standin.install(monkeypatch)
    build(engine_copy, low_memory=True, max_seq_len=64)
    for b in fake.builds:
        assert b.config.builder_optimization_level == 1 and b.config.max_aux_streams == 0
        assert b.config.pool == {"WORKSPACE": 512 << 20}
        assert "TF32" in b.config.cleared  # fp32 graphs: no TF32, parity with the ONNX
    assert load_manifest(engine_copy).trt.decoder.profiles[PREFILL].shape(io.INPUTS_EMBEDS).max[1] == 64


def test_build_without_tensorrt_is_one_line(engine_copy):
    proc = run_cli("-m", "export.trt", "--engine", str(engine_copy))
    assert_one_line_error(proc, "tensorrt", "python3-libnvinfer")


def test_build_refuses_bad_limits(engine_copy, monkeypatch):
    trt_standin.install(monkeypatch)
    with pytest.raises(EngineError, match=r"--max-seq-len 100000 is outside 2\.\.256"):
        build(engine_copy, max_seq_len=100000)


# ----------------------------------------------------------------------------- runtime


@pytest.mark.parametrize("image", IMAGES, ids=["shapes", "text"])
def test_greedy_equals_onnxruntime(planned, monkeypatch, image):
    ort_ids = greedy(planned, "onnxruntime", image)
    trt_standin.install(monkeypatch)
    assert greedy(planned, "trt", image) == ort_ids


@pytest.mark.parametrize("image", IMAGES, ids=["shapes", "text"])
def test_in_place_cache_writes_equal_onnxruntime(planned_aligned, monkeypatch, image):
    ort_ids = greedy(planned_aligned, "onnxruntime", image)
    trt_standin.install(monkeypatch)
    with FlashVL.load(planned_aligned, backend="trt") as vl:
        assert not vl.decoder.staged
        assert vl.generate(None if image is None else str(image), PROMPT, max_new_tokens=24).token_ids == ort_ids


@pytest.mark.parametrize("name", ["fp16", "int8", "int4-fp16"])
def test_reduced_precision_plans_equal_onnxruntime(precision_engines, name, tmp_path, monkeypatch):
    """fp16 KV caches (2-byte rows), the calibrated QDQ vision graph, W4A16: built and run as recorded."""
    dst = tmp_path / name
    shutil.copytree(precision_engines[name], dst)
    fake, _ = trt_standin.install(monkeypatch)
    m = build(dst)
    assert m.trt.vision.onnx == m.graphs.vision.file and m.trt.decoder.precision == m.graphs.decoder.precision
    assert all("TF32" not in b.config.cleared for b in fake.builds)  # TF32 is cleared for fp32 graphs only
    assert greedy(dst, "trt", IMAGES[0]) == greedy(dst, "onnxruntime", IMAGES[0])


def test_build_refuses_the_onnxruntime_flavour(precision_engines, tmp_path, monkeypatch):
    dst = tmp_path / "ort"
    shutil.copytree(precision_engines["int4-ort"], dst)
    trt_standin.install(monkeypatch)
    with pytest.raises(EngineError, match="'onnxruntime' flavour .* re-export with `--flavour standard`"):
        build(dst)
    assert load_manifest(dst).trt is None and not (dst / "vision.plan").exists()


def test_dynamic_tiles_in_chunks_equal_onnxruntime(planned_dynamic, monkeypatch, test_images):
    ort_ids = greedy(planned_dynamic, "onnxruntime", test_images["panorama"])
    _, dev = trt_standin.install(monkeypatch)
    assert greedy(planned_dynamic, "trt", test_images["panorama"]) == ort_ids
    assert dev.runs > 3  # several 2-tile vision runs, then the decoder


def test_kv_cache_stays_on_device(planned, monkeypatch):
    _, dev = trt_standin.install(monkeypatch)
    with FlashVL.load(planned, backend="trt") as vl:
        m = vl.manifest
        logits = vl.decoder.forward(np.zeros((1, 5, m.decoder.dim), np.float32), 0)  # prefill
        before = (dev.h2d_bytes, dev.d2h_bytes)
        for pos in range(5, 9):
            vl.decoder.forward(np.zeros((1, 1, m.decoder.dim), np.float32), pos)
        per_step_in = (dev.h2d_bytes - before[0]) / 4
        per_step_out = (dev.d2h_bytes - before[1]) / 4
    assert logits.shape == (1, m.decoder.vocab_size)
    assert per_step_out == m.decoder.vocab_size * 4  # only the logits come back
    assert per_step_in == m.decoder.dim * 4 + 8  # one embedding row and one position go in


def test_decode_steps_replay_cuda_graphs(planned, monkeypatch):
    ort_ids = greedy(planned, "onnxruntime", IMAGES[0])
    _, dev = trt_standin.install(monkeypatch)
    with FlashVL.load(planned, backend="trt") as vl:
        first = vl.generate(str(IMAGES[0]), PROMPT, max_new_tokens=24).token_ids
        assert dev.launches == 0  # first visit of each position: plain enqueue, then capture
        second = vl.generate(str(IMAGES[0]), PROMPT, max_new_tokens=24).token_ids
        assert dev.launches == len(vl.decoder.graphs) > 0  # every step of the repeat is a replay
    assert first == second == ort_ids
    _, dev = trt_standin.install(monkeypatch)
    assert greedy(planned, "trt", IMAGES[0], cuda_graphs=False) == ort_ids and dev.launches == 0


def test_misaligned_cache_blocks_refused(planned, monkeypatch):
    trt_standin.install(monkeypatch)
    with pytest.raises(EngineError, match="not 256-byte aligned; use an even --max-seq-len"):
        FlashVL.load(planned, backend="trt", max_seq_len=101)  # 101 rows x 128 bytes


def test_engine_io_checked_against_manifest(planned, tmp_path, monkeypatch):
    dst = tmp_path / "e"
    shutil.copytree(planned, dst)
    m = load_manifest(dst)
    bad = dataclasses.replace(m.trt.decoder.profiles[DECODE], name="decode")
    shapes = tuple(dataclasses.replace(s, max=tuple(d + (k == 0 and s.max[0] > 1) for k, d in enumerate(s.max)))
                   for s in bad.shapes)
    decoder = dataclasses.replace(m.trt.decoder, profiles=(m.trt.decoder.profiles[PREFILL],
                                                           dataclasses.replace(bad, shapes=shapes)))
    save_manifest(dst, dataclasses.replace(m, trt=dataclasses.replace(m.trt, decoder=decoder)))
    trt_standin.install(monkeypatch)
    with pytest.raises(EngineError, match="profile 'decode' of .* manifest.json says .* rebuild"):
        FlashVL.load(dst, backend="trt")


# ----------------------------------------------------------------------------- which backend


@pytest.mark.parametrize("device, version, needle", [
    ({"name": "NVIDIA H100 80GB HBM3", "cc": "9.0"}, "10.3.0", "built with TensorRT 10.3.0 on Stand-in Orin"),
    ({}, "10.8.0", "this machine has TensorRT 10.8.0"),
])
def test_plans_for_another_machine(planned, monkeypatch, device, version, needle):
    trt_standin.install(monkeypatch, version=version, **device)
    with pytest.raises(EngineError, match=needle + r".*python -m export\.trt --engine"):
        FlashVL.load(planned, backend="trt")
    with FlashVL.load(planned, backend="auto") as vl:
        assert vl.backend.name == "onnxruntime" and "rebuild them here" in vl.backend.reason


def test_stale_plans_after_reexport(planned, tmp_path, monkeypatch):
    dst = tmp_path / "e"
    shutil.copytree(planned, dst)
    m = load_manifest(dst)
    save_manifest(dst, dataclasses.replace(m, trt=dataclasses.replace(
        m.trt, vision=dataclasses.replace(m.trt.vision, onnx_sha256="0" * 64))))
    trt_standin.install(monkeypatch)
    with pytest.raises(EngineError, match="re-exported or recalibrated since"):
        FlashVL.load(dst, backend="trt")


def test_auto_picks_tensorrt_when_plans_fit(planned, monkeypatch):
    trt_standin.install(monkeypatch)
    with FlashVL.load(planned) as vl:
        assert vl.backend.name == "tensorrt"
        assert "TensorRT 10.3.0 on Stand-in Orin (sm 8.7) match this machine" in vl.backend.line()


def test_decide_without_plans_or_gpu():
    assert decide("auto", "", "", "no plans here") == BackendChoice("onnxruntime", "no plans here")
    assert decide("auto", "", "no CUDA GPU", "") == BackendChoice("onnxruntime", "no CUDA GPU")
    assert decide("auto", "", "", "", "X") == BackendChoice("tensorrt", "plans built for X match this machine")
    assert decide("onnxruntime", "", "", "").reason.startswith("requested")
    with pytest.raises(EngineError, match="--backend trt: tensorrt missing; or run on the CPU"):
        decide("trt", "tensorrt missing", "", "")
    with pytest.raises(EngineError, match="--backend must be one of"):
        decide("cuda", "", "", "")


def test_cli_says_backend_once(tiny_engine):
    proc = run_cli("-m", "runtime.run", "--engine", str(tiny_engine), "--max-new-tokens", "4")
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("backend: ")]
    assert lines == [f"backend: onnxruntime ({tiny_engine} has no TensorRT plans; build them on the GPU with "
                     f"`python -m export.trt --engine {tiny_engine}`)"]


def test_cli_backend_trt_without_plans(tiny_engine):
    proc = run_cli("-m", "runtime.run", "--engine", str(tiny_engine), "--backend", "trt")
    assert_one_line_error(proc, "--backend trt", "python -m export.trt --engine", "--backend onnxruntime")


def test_cli_json_equal_across_backends(planned, monkeypatch, capsys):
    from runtime.run import main

    args = ["--engine", str(planned), "--image", str(IMAGES[0]), "--max-new-tokens", "12", "--json"]
    assert main(args + ["--backend", "onnxruntime"]) == 0
    want = json.loads(capsys.readouterr().out)
    trt_standin.install(monkeypatch)
    assert main(args + ["--backend", "trt"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["token_ids"] == want["token_ids"]
    assert "backend: tensorrt" in out.err


def test_camera_loop_on_tensorrt_says_what_onnxruntime_says(planned, monkeypatch, test_images):
    """The caption loop over the TensorRT backend: the GPU is made current on the model thread, vision
    runs there between captions (one stream), and the captions equal ONNX Runtime's."""
    import cv2

    from runtime.video import PromptConfig

    frames = [cv2.imread(str(IMAGES[0])), cv2.imread(str(test_images["scene"])), cv2.imread(str(IMAGES[0]))]
    prompt = PromptConfig(max_new_tokens=12)
    with FlashVL.load(planned, backend="onnxruntime") as vl:
        assert vl.encodes_concurrently
        with vl.captions(frames, prompt, realtime=False) as events:
            want = [e.caption for e in events]
    trt_standin.install(monkeypatch)
    with FlashVL.load(planned, backend="trt") as vl:
        assert not vl.encodes_concurrently
        with vl.captions(frames, prompt, realtime=False) as events:
            got = [e.caption for e in events]
        assert vl._owner.cuda.threads_entered == 1  # the model thread, once
    assert got == want and len(got) == 3
