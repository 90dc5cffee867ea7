"""The TensorRT builder and backend, run on stand-ins (tests/trt_standin.py) where TensorRT is absent.

The stand-in runs the real ONNX graphs with ONNX Runtime at the addresses the backend binds, so
these tests check the backend's own logic with real numerics: profiles, buffers, binding by
name, the device-resident KV cache and its staging copies, ragged batches, CUDA graph replay,
plan/machine checks and the backend choice.  Greedy tokens through it must equal the ONNX Runtime
backend's, token for token; each sequence of a batch gets the logits it gets alone.
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
from runtime.trt_profiles import (ALIGN, DECODE, EMPTY, KV_CACHE, KV_NEW, KV_PAST, PREFILL, check_shape,
                                  decode_call, decoder_profiles, kv_layout, prefill_call)
from tests import trt_standin
from tests.conftest import ROOT, assert_one_line_error, run_cli

IMAGES = [ROOT / "samples" / "shapes.png", None]
PROMPT = "Describe the image."


def build(engine_dir, **cfg):
    from export.trt.build import BuildConfig, build_plans

    return build_plans(engine_dir, BuildConfig(**cfg))


@pytest.fixture(scope="module")
def planned(tiny_engine, tmp_path_factory):
    """A copy of the tiny engine with one-sequence stand-in plans (TensorRT 10.3.0, 'Stand-in Orin'): B = 1,
    the path with CUDA graphs."""
    dst = tmp_path_factory.mktemp("trt") / "tiny"
    shutil.copytree(tiny_engine, dst)
    with pytest.MonkeyPatch.context() as mp:
        fake, _ = trt_standin.install(mp)
        build(dst, max_batch=1)
        assert len(fake.builds) == 2
    return dst


@pytest.fixture(scope="module")
def planned_batched(tiny_engine, tmp_path_factory):
    """The tiny engine with plans built as `python -m export.trt` builds them by default: B = the export's 8."""
    dst = tmp_path_factory.mktemp("trt") / "tiny-batched"
    shutil.copytree(tiny_engine, dst)
    with pytest.MonkeyPatch.context() as mp:
        trt_standin.install(mp)
        build(dst)
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
    """A tiny variant whose cache rows are 256 bytes (2 KV heads x 32 x f32), one slot: new K/V written in place.

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
        build(dst, max_batch=1)
    return dst


def greedy(engine_dir, backend, image, **load):
    with FlashVL.load(engine_dir, backend=backend, **load) as vl:
        return vl.generate(None if image is None else str(image), PROMPT, max_new_tokens=24).token_ids


# ----------------------------------------------------------------------------- pure planning


def test_calls_refuse_rows_past_the_cache(tiny_engine):
    dec = load_manifest(tiny_engine).decoder
    layout = kv_layout(dec, 16, 2, 4)
    with pytest.raises(EngineError, match="positions 13..16 does not fit the 16-row KV cache"):
        prefill_call(dec, layout, 1, 4, 13)
    with pytest.raises(EngineError, match="a token of slot 1 at position 16 does not fit the 16-row KV cache"):
        decode_call(dec, layout, [3, 16], (0, 1))


def test_profiles_cover_prefill_and_decode(tiny_engine):
    m = load_manifest(tiny_engine)
    prefill, decode = decoder_profiles(m.graphs.decoder, 64, 1, 30)
    assert prefill.shape(io.INPUTS_EMBEDS).max == (1, 64, m.decoder.dim)
    assert decode.shape(io.INPUTS_EMBEDS).max == (1, 1, m.decoder.dim)
    assert decode.shape(io.past_key(0)).max == (63, 1, m.decoder.n_kv_heads, m.decoder.head_dim)
    with pytest.raises(EngineError, match=r"outside the 'decode' profile .*--max-seq-len"):
        check_shape(decode, io.INPUTS_EMBEDS, (1, 2, m.decoder.dim), "decoder.plan")


def test_profiles_cover_the_batch(tiny_engine):
    """Decode steps of 1..B slots; a prefill is one slot's (a batch-B prefill profile would size the
    activation memory for B x T tokens)."""
    m = load_manifest(tiny_engine)
    prefill, decode = decoder_profiles(m.graphs.decoder, 64, 3, 30)
    d, kv = m.decoder, (m.decoder.n_kv_heads, m.decoder.head_dim)
    assert (decode.shape(io.INPUTS_EMBEDS).min, decode.shape(io.INPUTS_EMBEDS).max) == ((1, 1, d.dim), (3, 1, d.dim))
    assert decode.shape(io.INPUTS_EMBEDS).opt == (3, 1, d.dim)  # the runtime decodes at the full width
    assert decode.shape(io.POSITION_IDS).max == (3, 1) and decode.shape(io.past_value(1)).max == (63, 3) + kv
    assert prefill.shape(io.INPUTS_EMBEDS).max == (1, 64, d.dim) and prefill.shape(io.past_key(0)).max == (63, 1) + kv
    with pytest.raises(EngineError, match=r"outside the 'decode' profile .*--max-batch"):
        check_shape(decode, io.INPUTS_EMBEDS, (4, 1, d.dim), "decoder.plan")


def _dec(layers, kv, hd, t) -> DecoderSpec:
    return DecoderSpec("qwen2", layers, kv * hd * 2, kv * 2, kv, hd, 8, 1e-6, 1e4, 32, True, t, "seq_major")


def _apply(copies, dst: np.ndarray, src: np.ndarray) -> None:
    """The backend's device copies, on the bytes of NumPy arrays."""
    d, s = dst.reshape(-1).view(np.uint8), src.reshape(-1).view(np.uint8)
    for c in copies:
        for r in range(c.rows):
            d[c.dst + r * c.dst_pitch:][:c.width] = s[c.src + r * c.src_pitch:][:c.width]


def _bound(call, name, shape, bufs) -> np.ndarray:
    """The f32 array a K/V binding of `call` gives the engine, as a writable view of its buffer."""
    buf, off = call.kv[name]
    n = int(np.prod(shape)) * 4
    if buf == EMPTY:
        assert n == 0, (name, shape)
        return np.zeros(shape, np.float32)
    return bufs[buf].reshape(-1).view(np.uint8)[off:off + n].view(np.float32).reshape(shape)


def _check_addresses(call, layout) -> None:
    assert len(set(call.kv.values())) == len(call.kv)  # TensorRT: distinct addresses
    if layout.max_seq_len * layout.row_bytes % ALIGN == 0:  # what the backend requires of a layout
        assert all(off % ALIGN == 0 for _, off in call.kv.values())


@settings(max_examples=60, deadline=None)
@given(layers=st.integers(1, 3), kv=st.integers(1, 2), hd=st.sampled_from([2, 8, 32]), t=st.integers(2, 20),
       b=st.integers(1, 4), data=st.data())
def test_prefill_call_touches_only_its_slots_rows(layers, kv, hd, t, b, data):
    """Bound as the call says, the engine sees the slot's rows 0..pos-1 and its new rows land at pos..pos+S-1."""
    dec, layout = _dec(layers, kv, hd, t), kv_layout(_dec(layers, kv, hd, t), t, b, 4)
    seq = data.draw(st.integers(2, t))
    pos, slot = data.draw(st.integers(0, t - seq)), data.draw(st.integers(0, b - 1))
    rng = np.random.default_rng(seq * 31 + pos)
    cache = rng.standard_normal((layers, 2, t, b, kv, hd)).astype(np.float32)  # [L, 2, T, B, Hkv, hd]
    want = cache.copy()
    bufs = {KV_CACHE: cache, KV_PAST: np.zeros(2 * layers * layout.block, np.uint8),
            KV_NEW: np.zeros(2 * layers * layout.block, np.uint8)}
    call = prefill_call(dec, layout, slot, seq, pos)
    assert call.profile == PREFILL and call.shapes[io.INPUTS_EMBEDS] == (1, seq, dec.dim)
    _check_addresses(call, layout)
    _apply(call.gather, bufs[KV_PAST], cache)
    for i in range(layers):
        for j, (past, new) in enumerate(((io.past_key(i), io.new_key(i)), (io.past_value(i), io.new_value(i)))):
            assert call.shapes[past] == (pos, 1, kv, hd)
            np.testing.assert_array_equal(_bound(call, past, (pos, 1, kv, hd), bufs)[:, 0], cache[i, j, :pos, slot])
            rows = rng.standard_normal((seq, 1, kv, hd)).astype(np.float32)  # what the engine writes
            _bound(call, new, rows.shape, bufs)[...] = rows
            want[i, j, pos:pos + seq, slot] = rows[:, 0]
    _apply(call.scatter, cache, bufs[KV_NEW])
    np.testing.assert_array_equal(cache, want)
    assert layout.in_place == (b == 1 and kv * hd * 4 % ALIGN == 0) and (not call.scatter) == layout.in_place


@settings(max_examples=60, deadline=None)
@given(layers=st.integers(1, 3), kv=st.integers(1, 2), hd=st.sampled_from([2, 8, 32]), t=st.integers(2, 20),
       b=st.integers(1, 4), data=st.data())
def test_decode_call_writes_each_slot_at_its_own_row(layers, kv, hd, t, b, data):
    """All B slots in one run over rows 0..Pmax-1 of the cache; slots 0..n-1 keep their row, at their positions."""
    dec, layout = _dec(layers, kv, hd, t), kv_layout(_dec(layers, kv, hd, t), t, b, 4)
    n = data.draw(st.integers(1, b))
    positions = data.draw(st.lists(st.integers(0, t - 1), min_size=n, max_size=n)) + [0] * (b - n)
    rng = np.random.default_rng(sum(positions))
    cache = rng.standard_normal((layers, 2, t, b, kv, hd)).astype(np.float32)  # [L, 2, T, B, Hkv, hd]
    want = cache.copy()
    bufs = {KV_CACHE: cache, KV_NEW: np.zeros(2 * layers * layout.block, np.uint8)}
    call = decode_call(dec, layout, positions, tuple(range(n)))
    pmax = max(positions)
    assert call.profile == DECODE and call.shapes[io.INPUTS_EMBEDS] == (b, 1, dec.dim) and not call.gather
    _check_addresses(call, layout)
    for i in range(layers):
        for j, (past, new) in enumerate(((io.past_key(i), io.new_key(i)), (io.past_value(i), io.new_value(i)))):
            assert call.shapes[past] == (pmax, b, kv, hd)
            np.testing.assert_array_equal(_bound(call, past, (pmax, b, kv, hd), bufs), cache[i, j, :pmax])
            rows = rng.standard_normal((1, b, kv, hd)).astype(np.float32)  # what the engine writes
            _bound(call, new, rows.shape, bufs)[...] = rows
            for s in range(n):
                want[i, j, positions[s], s] = rows[0, s]
    _apply(call.scatter, cache, bufs[KV_NEW])
    np.testing.assert_array_equal(cache, want)
    assert len(call.scatter) == (0 if layout.in_place else n)  # one strided copy per written slot


# ----------------------------------------------------------------------------- builder


def test_build_records_plans_in_manifest(planned):
    m = load_manifest(planned)
    t = m.trt
    assert (t.tensorrt_version, t.gpu_name, t.compute_capability) == ("10.3.0", "Stand-in Orin", "8.7")
    assert t.max_seq_len == m.decoder.max_seq_len and t.vision_max_batch == 1 and t.max_batch == 1
    assert [p.name for p in t.decoder.profiles] == ["prefill", "decode"]
    assert t.decoder.onnx == m.graphs.decoder.file and t.decoder.builder_peak_host_bytes > 0
    assert (planned / "vision.plan").stat().st_size == t.vision.bytes
    assert (planned / "timing.cache").read_bytes().startswith(b"STANDIN-TIMING-CACHE")
    assert plan_mismatch(planned, m, "10.3.0", "Stand-in Orin", "8.7") == ""


def test_build_batch_defaults_to_the_exports(planned_batched):
    m = load_manifest(planned_batched)
    assert m.graphs.decoder.max_batch == 8 and m.trt.max_batch == 8
    prefill, decode = m.trt.decoder.profiles
    assert decode.shape(io.INPUTS_EMBEDS).max[0] == 8 and decode.shape(io.past_key(0)).max[1] == 8
    assert prefill.shape(io.INPUTS_EMBEDS).max[0] == 1


def test_build_refuses_a_batch_above_the_exports(engine_copy):
    proc = run_cli("-m", "export.trt", "--engine", str(engine_copy), "--max-batch", "9")
    assert_one_line_error(proc, "--max-batch 9 is above 8, the batch decoder.onnx was exported for",
                          "python -m export --max-batch 9")
    assert load_manifest(engine_copy).trt is None and not (engine_copy / "decoder.plan").exists()


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


@pytest.mark.parametrize("plans", ["planned", "planned_batched"])
@pytest.mark.parametrize("image", IMAGES, ids=["shapes", "text"])
def test_greedy_equals_onnxruntime(plans, request, monkeypatch, image):
    engine = request.getfixturevalue(plans)
    ort_ids = greedy(engine, "onnxruntime", image)
    trt_standin.install(monkeypatch)
    assert greedy(engine, "trt", image) == ort_ids


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


class Alone:
    """One sequence through decoder.onnx on ONNX Runtime at batch 1, its K/V kept in NumPy: the reference."""

    def __init__(self, engine_dir, m):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(engine_dir / m.graphs.decoder.file), providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        d = m.decoder
        self.past = {n: np.zeros((0, 1, d.n_kv_heads, d.head_dim), np.float32)  # [P, 1, Hkv, hd]
                     for i in range(d.n_layers) for n in (io.past_key(i), io.past_value(i))}

    def __call__(self, embeds: np.ndarray) -> np.ndarray:
        # [1, S, D] after the rows so far -> logits [1, V]
        pos, s = len(self.past[io.past_key(0)]), embeds.shape[1]
        out = dict(zip(self.names, self.session.run(self.names, {
            io.INPUTS_EMBEDS: embeds, io.POSITION_IDS: np.arange(pos, pos + s)[None], **self.past})))
        for name in self.past:
            self.past[name] = np.concatenate([self.past[name], out[name.replace("past_", "new_")]])
        return out[io.LOGITS]


def test_ragged_batch_equals_each_sequence_alone(planned_batched, monkeypatch):
    """Three prompts of different lengths in slots 0..2 of a B = 8 cache: staggered prefills (one while
    others decode, one in chunks, the last chunk of one token), slots idle mid-prefill and mid-answer
    (zeros at their filled length), then resumed.  Each sequence's logits equal its own run alone."""
    from runtime.embedding import TokenEmbedding
    from runtime.trt_backend import TrtEngines

    m = load_manifest(planned_batched)
    table = TokenEmbedding(planned_batched / m.embeddings.file, m.embeddings, m.tokens.image_pad_id)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, m.decoder.vocab_size, n) for n in (5, 9, 3)]
    filled, token = [0, 0, 0], [0, 0, 0]
    got = [[], [], []]  # per sequence: the logits of its prompt's last position, then of each decode step
    trt_standin.install(monkeypatch)
    owner = TrtEngines(planned_batched, m)
    d = owner.decoder

    def prefill(k, end):
        logits = d.prefill(k, table.tokens(prompts[k][filled[k]:end]), filled[k])  # [1, V]
        filled[k] = end
        if end == len(prompts[k]):
            got[k].append(logits[0].copy())
            token[k] = int(logits[0].argmax())

    def step(active, n):
        embeds = np.zeros((n, 1, m.decoder.dim), np.float32)  # [n, 1, D]: zeros for idle slots
        for k in active:
            embeds[k] = table.tokens(np.array([token[k]]))[0]
        logits = d.decode(embeds, np.array(filled[:n]))  # [n, V]
        assert logits.shape == (n, m.decoder.vocab_size)
        for k in active:
            got[k].append(logits[k].copy())
            token[k], filled[k] = int(logits[k].argmax()), filled[k] + 1

    try:
        assert d.max_batch == 8 and d.staged and not d.use_graphs
        prefill(0, 5)
        step({0}, 1)
        prefill(1, 4)      # a chunk of slot 1's prompt ...
        step({0}, 2)       # ... which sits idle at position 4 while slot 0 decodes
        prefill(1, 8)      # chunk 2, then the last one of one token
        step({0}, 3)       # slot 2 empty (position 0)
        prefill(1, 9)
        step({0, 1}, 2)
        prefill(2, 3)      # prefilled while the others decode
        for active in [{0, 1, 2}] * 2 + [{1, 2}] * 2 + [{0, 1, 2}] * 2:  # slot 0 idle mid-answer, then resumed
            step(active, 3)
    finally:
        owner.close()

    for k, prompt in enumerate(prompts):
        alone = Alone(planned_batched, m)
        want = [alone(table.tokens(prompt))[0]]
        while len(want) < len(got[k]):
            want.append(alone(table.tokens(np.array([int(want[-1].argmax())])))[0])
        np.testing.assert_allclose(np.array(got[k]), np.array(want), rtol=1e-5, atol=1e-5)
        assert [int(x.argmax()) for x in got[k]] == [int(x.argmax()) for x in want]
    assert [len(g) for g in got] == [9, 8, 7]
    assert len({int(x.argmax()) for g in got for x in g}) > 3  # the tokens vary: the comparison can fail


def test_decoder_slots_are_the_least_of_plan_graph_and_caller(planned_batched, monkeypatch):
    from runtime.trt_backend import TrtEngines

    m = load_manifest(planned_batched)
    legacy = dataclasses.replace(m.graphs.decoder, max_batch=1)  # a graph that masks by shape (before schema 5)
    trt_standin.install(monkeypatch)
    old = dataclasses.replace(m, graphs=dataclasses.replace(m.graphs, decoder=legacy))
    for manifest, asked, want in ((m, None, 8), (m, 3, 3), (m, 20, 8), (old, None, 1)):
        owner = TrtEngines(planned_batched, manifest, max_batch=asked)
        try:
            assert owner.decoder.max_batch == want and owner.decoder.use_graphs == (want == 1)
            with pytest.raises(EngineError, match=f"prefill of slot {want}, the decoder has slots 0..{want - 1}"):
                owner.decoder.prefill(want, np.zeros((1, 2, m.decoder.dim), np.float32), 0)
        finally:
            owner.close()


def test_batched_steps_keep_the_cache_on_device(planned_batched, monkeypatch):
    """A decode step of 2 busy slots runs all 8 (zeros in for the others) and brings back 2 rows of logits."""
    from runtime.trt_backend import TrtEngines

    m = load_manifest(planned_batched)
    _, dev = trt_standin.install(monkeypatch)
    owner = TrtEngines(planned_batched, m)
    try:
        d = owner.decoder
        d.prefill(1, np.ones((1, 4, m.decoder.dim), np.float32), 0)
        before = (dev.h2d_bytes, dev.d2h_bytes)
        logits = d.decode(np.ones((2, 1, m.decoder.dim), np.float32), np.array([0, 4]))
    finally:
        owner.close()
    assert logits.shape == (2, m.decoder.vocab_size)
    assert dev.d2h_bytes - before[1] == 2 * m.decoder.vocab_size * 4
    assert dev.h2d_bytes - before[0] == 8 * (m.decoder.dim * 4 + 8)


def test_copies_per_call_do_not_grow_with_the_prompt(planned_batched, monkeypatch):
    """Each strided copy of a call is one 2-D copy: a prefill issues 2L to scatter its rows whatever its length
    (2L more to gather after cached rows), and a decode step one per busy slot, as many as 2L-piece copies."""
    from runtime.trt_backend import TrtEngines

    m = load_manifest(planned_batched)
    _, dev = trt_standin.install(monkeypatch)
    owner = TrtEngines(planned_batched, m)
    d, blocks = owner.decoder, 2 * m.decoder.n_layers

    def copies(run, *args) -> int:
        before = dev.d2d_copies
        run(*args)
        return dev.d2d_copies - before

    def embeds(n, s):
        return np.ones((n, s, m.decoder.dim), np.float32)  # [n, S, D]

    try:
        assert d.max_batch == 8 and m.decoder.n_layers > 1
        short = copies(d.prefill, 0, embeds(1, 5), 0)
        long = copies(d.prefill, 1, embeds(1, 40), 0)
        chunk = copies(d.prefill, 1, embeds(1, 7), 40)  # after 40 cached rows: gathered first
        step = copies(d.decode, embeds(3, 1), np.array([5, 47, 0]))
        one = copies(d.prefill, 2, embeds(1, 1), 0)  # a one-token prefill is a decode step writing one slot
    finally:
        owner.close()
    assert short == long == blocks
    assert chunk == 2 * blocks
    assert (step, one) == (3, 1)


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


def test_batched_plans_run_without_cuda_graphs(planned_batched, monkeypatch):
    ort_ids = greedy(planned_batched, "onnxruntime", IMAGES[0])
    _, dev = trt_standin.install(monkeypatch)
    with FlashVL.load(planned_batched, backend="trt") as vl:
        for _ in range(2):
            assert vl.generate(str(IMAGES[0]), PROMPT, max_new_tokens=24).token_ids == ort_ids
        assert not vl.decoder.use_graphs and not vl.decoder.graphs and dev.launches == 0


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
        assert vl._owner.cuda.threads_entered == 2  # the engine loop (all GPU work) and the camera loop, once each
    assert got == want and len(got) == 3
