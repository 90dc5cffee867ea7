"""The llama.cpp peer: the GGUF export.peers.gguf_file writes, llama.cpp's tokens on it, and its worker's CLI.

    GGUF     read back with gguf.GGUFReader: names (against gguf's own TensorNameMap), shapes, types,
             the qwen2.* metadata, and the weights: F32/F16 bit for bit, Q8_0/Q4_0 within their bounds
    parity   llama.cpp's greedy ids on the F32 GGUF == this runtime's (llama2.c's test_all.py, for a peer)
    worker   `python -m export.peers.llama_cpp` --prepare, then a Report; a skip without llama-cpp-python
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path
import pytest

from tests.extras import needs

needs("export")
needs("bench", only=("gguf",))

import gguf
import numpy as np

from export.peers.gguf_file import PRECISIONS, bpe_vocab, write_gguf
from runtime.bench.workload import Report, Workload, bench_prompts, worker_args
from tests.conftest import ROOT, assert_one_line_error, run_cli

pytestmark = pytest.mark.bench  # .ci/run runs these again once the [bench] extra is installed

Q = gguf.GGMLQuantizationType
WORKER = "export.peers.llama_cpp"


def _llama_cpp():
    """The llama_cpp module, or skip the test with the reason."""
    try:
        import llama_cpp
    except ImportError as e:
        pytest.skip(f"llama-cpp-python is not importable ({e})")
    return llama_cpp


@pytest.fixture(scope="module")
def decoder_state(tiny_engine):
    """The tiny engine's decoder weights under Qwen2ForCausalLM names, as NumPy fp32, and the manifest."""
    from export.peers.weights import decoder_module, hf_state_dict

    model, manifest = decoder_module(tiny_engine)
    return {k: v.numpy() for k, v in hf_state_dict(model.decoder).items()}, manifest


@pytest.fixture(scope="module")
def ggufs(decoder_state, tiny_engine, tmp_path_factory) -> dict[str, Path]:
    """The tiny decoder at every precision, with the engine's tokenizer; "no_vocab": F32 without one."""
    state, m = decoder_state
    out = tmp_path_factory.mktemp("gguf")
    paths = {p: write_gguf(out / f"decoder-{p}.gguf", m.decoder, state, p, m.tokens, tiny_engine / m.tokenizer)
             for p in PRECISIONS}
    paths["no_vocab"] = write_gguf(out / "decoder-no-vocab.gguf", m.decoder, state, "F32", m.tokens, None)
    return paths


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


# ----------------------------------------------------------------------------- the GGUF file


def expected_type(name: str, shape: tuple[int, ...], precision: str) -> Q:
    """llama.cpp's choice (convert_hf_to_gguf.py, llama-quantize), restated for the tiny model: every row
    is a multiple of 32, and token_embd is the tied logits table (Q6_K under llama-quantize's Q4_0; Q8_0 here)."""
    if len(shape) == 1 or precision == "F32":
        return Q.F32
    if precision == "Q4_0" and name == "token_embd.weight":
        return Q.Q8_0
    return Q[precision]


def quant_bound(w: np.ndarray, qtype: Q) -> np.ndarray:
    """Per-element bound on |dequantize(quantize(w)) - w| for 32-element blocks [n_blocks, 32].

    Q8_0: d = amax/127, q = round(w/d) in [-127, 127] -> |w - q d| <= d/2; d is stored as fp16, off by at most
          2^-11 d, which moves q d by at most 127 * 2^-11 d.  Bound: d (1/2 + 127/2048).
    Q4_0: d = -m/8 with m the block's largest-magnitude value; q - 8 = w/d rounded half up, clipped to
          [-8, 7]: the clip costs a whole step where w = -m, so |w - (q-8) d| <= |d|; fp16 d adds 8 * 2^-11 |d|.
    A relative 1e-5 covers float32 rounding in the quantizer.
    """
    amax = np.abs(w.reshape(-1, 32)).max(axis=1, keepdims=True)  # [n_blocks, 1]
    if qtype == Q.Q8_0:
        return amax / 127 * (0.5 + 127 / 2048) * (1 + 1e-5)
    assert qtype == Q.Q4_0
    return amax / 8 * (1 + 8 / 2048) * (1 + 1e-5)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_gguf_reads_back(ggufs, decoder_state, precision):
    state, m = decoder_state
    spec = m.decoder
    reader = gguf.GGUFReader(ggufs[precision])

    assert _field(reader, "general.architecture") == "qwen2"
    assert _field(reader, "general.file_type") == int(gguf.LlamaFileType[
        {"F32": "ALL_F32", "F16": "MOSTLY_F16", "Q8_0": "MOSTLY_Q8_0", "Q4_0": "MOSTLY_Q4_0"}[precision]])
    expected = {"context_length": spec.max_seq_len, "embedding_length": spec.dim, "block_count": spec.n_layers,
                "feed_forward_length": spec.hidden_dim, "attention.head_count": spec.n_heads,
                "attention.head_count_kv": spec.n_kv_heads, "attention.key_length": spec.head_dim,
                "attention.value_length": spec.head_dim, "vocab_size": spec.vocab_size}
    for key, value in expected.items():
        assert _field(reader, f"qwen2.{key}") == value, key
    assert _field(reader, "qwen2.rope.freq_base") == np.float32(spec.rope_theta)
    assert _field(reader, "qwen2.attention.layer_norm_rms_epsilon") == np.float32(spec.norm_eps)
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert len(_field(reader, "tokenizer.ggml.tokens")) == spec.vocab_size
    assert _field(reader, "tokenizer.ggml.eos_token_id") == m.tokens.eos_id

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, spec.n_layers)  # llama.cpp's converter's names
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # tied: the logits reuse token_embd
    assert len(tensors) == len(state) == 2 + 12 * spec.n_layers
    for hf, w in state.items():
        name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        assert name in tensors, (hf, name, sorted(tensors))
        t = tensors[name]
        assert tuple(int(d) for d in reversed(t.shape)) == w.shape, name  # GGUF lists ggml's order, fastest first
        assert t.tensor_type == expected_type(name, w.shape, precision), name
        if t.tensor_type in (Q.F32, Q.F16):  # bit for bit: the conversion is a cast or nothing
            want = w.astype(np.float16 if t.tensor_type == Q.F16 else np.float32)
            assert t.data.reshape(w.shape).tobytes() == want.tobytes(), name
        else:
            err = np.abs(gguf.quants.dequantize(t.data, t.tensor_type) - w).reshape(-1, 32)  # [n_blocks, 32]
            assert (err <= quant_bound(w, t.tensor_type)).all(), (name, float(err.max()))


def test_gguf_without_vocabulary(ggufs, decoder_state):
    reader = gguf.GGUFReader(ggufs["no_vocab"])
    assert _field(reader, "tokenizer.ggml.model") == "no_vocab"
    assert "tokenizer.ggml.tokens" not in reader.fields
    assert _field(reader, "qwen2.vocab_size") == decoder_state[1].decoder.vocab_size


def test_vocabulary_is_padded(tiny_engine, decoder_state):
    m = decoder_state[1]
    names, types, merges = bpe_vocab(tiny_engine / m.tokenizer, m.decoder.vocab_size)
    assert len(names) == len(types) == m.decoder.vocab_size and len(set(names)) == len(names)
    assert names[m.tokens.im_end_id] == m.tokens.im_end and types[m.tokens.im_end_id] == gguf.TokenType.CONTROL
    assert names[-1] == f"[PAD{m.decoder.vocab_size - 1}]" and types[-1] == gguf.TokenType.UNUSED
    assert merges and all(len(x.split(" ")) == 2 for x in merges)


def test_write_gguf_errors(decoder_state, tmp_path):
    state, m = decoder_state
    with pytest.raises(ValueError, match=r"one of \('F32', 'F16', 'Q8_0', 'Q4_0'\), got 'Q4_K'"):
        write_gguf(tmp_path / "x.gguf", m.decoder, state, "Q4_K", m.tokens, None)
    with pytest.raises(ValueError, match="no llama.cpp name for decoder tensor 'model.layers.0.extra.weight'"):
        write_gguf(tmp_path / "x.gguf", m.decoder, {**state, "model.layers.0.extra.weight": state["model.norm.weight"]},
                   "F32", m.tokens, None)
    with pytest.raises(ValueError, match="tied_embeddings=True, but the state dict has lm_head.weight"):
        write_gguf(tmp_path / "x.gguf", m.decoder, {**state, "lm_head.weight": state["model.embed_tokens.weight"]},
                   "F32", m.tokens, None)
    assert not list(tmp_path.iterdir())  # nothing left behind, not even the .partial file


# ----------------------------------------------------------------------------- llama.cpp on it


def test_llama_cpp_loads_every_gguf(ggufs, decoder_state):
    _llama_cpp()
    from export.peers.llama_cpp import LlamaCpp

    for name, path in ggufs.items():
        llm = LlamaCpp(path, n_ctx=32, n_batch=16, threads=1)
        assert llm.n_vocab == decoder_state[1].decoder.vocab_size, name
        llm.close()


def test_greedy_ids_match_runtime(ggufs, tiny_engine):
    """llama.cpp on the F32 GGUF (fp32 attention) and this runtime, greedy from the same prompt ids."""
    _llama_cpp()
    from export.peers.llama_cpp import LlamaCpp, decode_round
    from runtime.api import FlashVL
    from runtime.generate import LoopState, Timings, decode_loop
    from runtime.sampling import Sampler, SamplingConfig

    n_new = 24
    vl = FlashVL.load(tiny_engine, backend="onnxruntime")
    ids, _ = bench_prompts(tiny_engine, vl.manifest, 40)
    state = LoopState(timings=Timings(), t_start=time.perf_counter())
    ours = [int(t) for t in decode_loop(vl.decoder, vl.embed, ids, None, Sampler(SamplingConfig(temperature=0.0)),
                                        n_new, (), state)]
    first_logits = vl.decoder.forward(vl.embed.prompt(ids, None), 0)[0]  # [V]

    llm = LlamaCpp(ggufs["F32"], n_ctx=len(ids) + n_new, n_batch=len(ids), threads=2, fp32_attention=True)
    figures, theirs = decode_round(llm, ids, n_new)
    llm.reset()
    llm.decode(ids)
    logits = llm.logits().copy()  # [V]
    llm.close()
    assert theirs == ours
    assert np.abs(logits - first_logits).max() <= 1e-4 * np.abs(first_logits).max()
    assert figures["prefill_ms"] > 0 and figures["decode_tokens_per_s"] > 0 and figures["host_overhead_ms"] >= 0


# ----------------------------------------------------------------------------- the worker


def test_worker_cli(tiny_engine, tmp_path):
    args = worker_args(tiny_engine, Workload(prompt_tokens=24, new_tokens=6, runs=2, threads=1), tmp_path / "cache")
    prep = run_cli("-m", WORKER, *args, "--prepare")
    assert prep.returncode == 0, prep.stderr
    last = prep.stdout.strip().splitlines()[-1:]
    try:
        importlib.import_module("llama_cpp")
    except ImportError:
        assert Report.from_json(last[0]).skipped.startswith("llama-cpp-python is not installed")
        return
    assert not last  # --prepare converts and reports nothing
    proc = run_cli("-m", WORKER, *args)
    assert proc.returncode == 0, proc.stderr
    report = Report.from_json(proc.stdout.strip().splitlines()[-1])
    assert (report.system, report.label, report.precision, report.skipped) == ("llama.cpp", "llama.cpp F32", "F32", "")
    assert len(report.rounds) == 2 and len(report.token_ids) == 6
    for r in report.rounds:
        assert set(r) == {"prefill_ms", "decode_tokens_per_s", "host_overhead_ms"}
        assert r["prefill_ms"] > 0 and r["decode_tokens_per_s"] > 0 and r["host_overhead_ms"] >= 0
    gguf_file = next((tmp_path / "cache").glob("*/decoder-F32.gguf"))
    assert report.files_bytes == gguf_file.stat().st_size > report.weights_bytes > 0
    assert report.peak_rss_bytes > 0 and report.version and report.notes
    assert "llama_model_loader" not in proc.stderr  # llama.cpp's load log is held back; warnings would show


def test_worker_skips_without_llama_cpp(tiny_engine, tmp_path):
    """A `llama_cpp` that fails to import (a stand-in first on the path) -> a skipped report, exit 0."""
    (tmp_path / "shadow").mkdir()
    (tmp_path / "shadow" / "llama_cpp.py").write_text("raise ImportError('no llama.cpp here')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "shadow"), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-m", WORKER, *worker_args(tiny_engine, Workload(), tmp_path / "cache")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = Report.from_json(proc.stdout.strip().splitlines()[-1])
    assert report.skipped == "llama-cpp-python is not installed (pip install llama-cpp-python)"
    assert (report.system, report.precision, report.rounds) == ("llama.cpp", "F32", [])


def test_worker_measures_only_after_prepare(tiny_engine, tmp_path):
    _llama_cpp()
    proc = run_cli("-m", WORKER, *worker_args(tiny_engine, Workload(), tmp_path / "cache"))
    assert_one_line_error(proc, "no GGUF", "--prepare")


def test_precision_map_covers_manifest():
    from export.peers.llama_cpp import PRECISIONS as MAP
    from runtime.manifest import PRECISIONS as ENGINE

    assert set(MAP) == set(ENGINE) and set(MAP.values()) == set(PRECISIONS)
