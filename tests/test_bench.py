"""`python -m runtime.bench`: this runtime and its peers on the same weights, the tables, JSON and plot.

The peers run for real on the tiny engine (PyTorch eager; ONNX Runtime GenAI built by its own model
builder when installed): on the same fp32 weights and prompt ids, their greedy ids equal ours, which
is what "same weights" means.  Timings are only checked for sanity, never against a goal.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.extras import needs

needs("export")

from runtime.bench import report as rep
from runtime.bench.workload import FIGURES, Report, Workload, prompt_ids, summarise
from tests.conftest import assert_one_line_error, run_cli

pytestmark = pytest.mark.bench  # .ci/run runs these again once the [bench] extra is installed

HAVE_GENAI = importlib.util.find_spec("onnxruntime_genai") is not None
HAVE_PLOT = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def bench_run(tiny_engine, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out, png = tmp / "bench.json", tmp / "bench.png"
    args = ["-m", "runtime.bench", "--engine", str(tiny_engine), "--peers", "torch,ortgenai", "--prompt-tokens", "60",
            "--new-tokens", "12", "--runs", "2", "--threads", "2", "--cache", str(tmp / "cache"), "--json", str(out)]
    proc = run_cli(*args, *(["--plot", str(png)] if HAVE_PLOT else []), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(out.read_text()), png


def test_every_system_measured_on_the_same_weights(bench_run):
    proc, data, _ = bench_run
    assert data["workload"] == {"prompt_tokens": 60, "new_tokens": 12, "runs": 2, "threads": 2}
    reports = {r["system"]: r for r in data["engines"][0]["reports"]}
    ours = reports["flash-vl"]
    assert len(ours["rounds"]) == 2 and set(ours["rounds"][0]) == set(FIGURES)
    for r in ours["rounds"]:
        step_ms = 1e3 / r["decode_tokens_per_s"]
        assert 0 <= r["host_overhead_ms"] < step_ms  # part of a step, never more
        assert 0 < r["vision_ms_per_tile"] < r["ttft_ms"]  # TTFT includes the vision graph
    assert ours["peak_rss_bytes"] > ours["weights_bytes"] > 0 and ours["files_bytes"] >= ours["weights_bytes"]
    assert len(ours["token_ids"]) == 12
    torch_ = reports["torch"]
    assert not torch_["skipped"] and len(torch_["rounds"]) == 2
    assert torch_["token_ids"] == ours["token_ids"]  # fp32, same weights, same prompt: the same greedy ids
    if HAVE_GENAI:
        genai = reports["ortgenai"]
        assert not genai["skipped"], genai["skipped"]
        assert genai["token_ids"] == ours["token_ids"]
        assert genai["rounds"][0]["prefill_ms"] > 0 and "ttft_ms" not in genai["rounds"][0]  # decoder only
    else:
        assert "not installed" in reports["ortgenai"]["skipped"]
    assert data["engines"][0]["reports"][0]["summary"]["decode_tokens_per_s"]["n"] == 2


def test_tables_print_figures_and_ratios(bench_run):
    proc, _, _ = bench_run
    out = proc.stdout
    assert "| flash-vl fp32 |" in out and "| PyTorch eager fp32 |" in out
    ratio_rows = [line for line in out.splitlines() if line.startswith("| PyTorch eager fp32 |") and "×" in line]
    assert len(ratio_rows) == 1 and ratio_rows[0].rstrip(" |").endswith("12/12")  # greedy ids equal, all 12


@pytest.mark.skipif(not HAVE_PLOT, reason="matplotlib (the bench extra) is not installed")
def test_plot_is_a_png(bench_run):
    _, _, png = bench_run
    img = cv2.imread(str(png))
    assert img is not None and img.shape[1] > 1000 and img.shape[0] > 300
    assert img.std() > 10  # bars and text, not a blank canvas


def test_converted_peer_models_are_cached(bench_run, tiny_engine):
    """A second run converts nothing: the transformers checkpoint the first wrote is reused."""
    from export.peers.weights import hf_checkpoint

    proc, _, _ = bench_run
    cache = Path(proc.args[proc.args.index("--cache") + 1])
    written = sorted(cache.glob("tiny-*/hf/model.safetensors"))
    assert len(written) == 1
    stamp = written[0].stat().st_mtime_ns
    assert hf_checkpoint(tiny_engine, cache) == written[0].parent
    assert written[0].stat().st_mtime_ns == stamp


def test_missing_peer_is_skipped_with_a_note(tiny_engine, tmp_path, monkeypatch):
    import runtime.bench.__main__ as bench

    monkeypatch.setitem(bench.PEERS, "torch", ("export.peers.torch_eager", ("no_such_module_xyz",), "pip install xyz"))
    reports = bench.bench_engine(tiny_engine, ["torch"], Workload(20, 4, 1, 1), tmp_path)
    assert reports[0].system == "flash-vl" and reports[0].rounds
    assert reports[1].skipped == "no_such_module_xyz not installed (pip install xyz)"
    assert "- PyTorch eager: skipped, no_such_module_xyz not installed" in rep.markdown(
        [{"engine": "e", "reports": reports}], Workload(20, 4, 1, 1))


@pytest.mark.parametrize("args,needle", [
    (["--runs", "0"], "--runs must be at least 1"),
    (["--new-tokens", "1"], "--new-tokens must be at least 2"),
    (["--peers", "torch,vllm"], "unknown peer 'vllm'"),
    (["--prompt-tokens", "250"], "exceed"),
    (["--plot", "out.jpg"], ".png"),
    (["--repeat", "0"], "--repeat must be at least 1"),
])
def test_bad_arguments_are_one_line(tiny_engine, args, needle):
    if args[0] == "--plot" and not HAVE_PLOT:
        needle = "matplotlib"
    proc = run_cli("-m", "runtime.bench", "--engine", str(tiny_engine), *args)
    assert_one_line_error(proc, needle)


def test_bad_engine_is_one_line(tmp_path):
    assert_one_line_error(run_cli("-m", "runtime.bench", "--engine", str(tmp_path / "none")), "none")


# ----------------------------------------------------------------------------- pure functions


def test_prompt_ids_are_deterministic_ordinary_tokens():
    avoid = (3, 5, 7, 490, 499)
    a = prompt_ids(400, 500, avoid)
    assert a.shape == (400,) and a.dtype == np.int64
    assert np.array_equal(a, prompt_ids(400, 500, avoid))
    assert not np.isin(a, avoid).any() and a.min() >= 0 and a.max() < 500
    assert not np.array_equal(a[:30], prompt_ids(30, 500, avoid, seed=1))


def _report(system, rounds, rss=0, ids=()):
    return Report(system=system, label=system, precision="fp32", rounds=rounds, peak_rss_bytes=rss,
                  token_ids=list(ids))


def test_summary_and_ratio_directions():
    ours = _report("flash-vl", [{"prefill_ms": 100.0, "decode_tokens_per_s": 30.0},
                                {"prefill_ms": 300.0, "decode_tokens_per_s": 10.0},
                                {"prefill_ms": 200.0, "decode_tokens_per_s": 20.0}], rss=1000, ids=[1, 2, 3, 4])
    peer = _report("peer", [{"prefill_ms": 400.0, "decode_tokens_per_s": 10.0}], rss=3000, ids=[1, 2, 9, 4])
    assert summarise(ours.rounds)["prefill_ms"] == {"median": 200.0, "min": 100.0, "max": 300.0, "n": 3}
    assert rep.ratio(ours, peer, "prefill_ms") == pytest.approx(2.0)  # peer takes twice as long
    assert rep.ratio(ours, peer, "decode_tokens_per_s") == pytest.approx(2.0)  # we decode twice as fast
    assert rep.ratio(ours, peer, "ttft_ms") is None  # neither measured it
    assert rep.rss_ratio(ours, peer) == pytest.approx(3.0)
    assert rep.ids_agree(ours, peer) == "2/4"
    assert rep.cell(ours.summary(), "prefill_ms") == "200 (100–300)"


def test_report_json_round_trip_and_schema_check():
    r = _report("flash-vl", [{"prefill_ms": 1.5}], ids=[4, 5])
    assert Report.from_json(r.to_json()) == r
    bad = json.loads(r.to_json())
    bad["version_schema"] = 99
    with pytest.raises(ValueError, match="schema 99"):
        Report.from_json(json.dumps(bad))


def test_passes_pool_their_rounds():
    from runtime.bench.__main__ import merge

    a = _report("llama.cpp", [{"prefill_ms": 1.0}], rss=5, ids=[1])
    b = _report("llama.cpp", [{"prefill_ms": 3.0}, {"prefill_ms": 2.0}], rss=9, ids=[2])
    skipped = Report(system="llama.cpp", label="llama.cpp", precision="", skipped="its worker failed")
    m = merge([a, skipped, b])
    assert [r["prefill_ms"] for r in m.rounds] == [1.0, 3.0, 2.0] and m.peak_rss_bytes == 9 and m.token_ids == [2]
    assert m.notes[-1] == "1 of 3 passes failed"
    assert merge([skipped, skipped]).skipped == "its worker failed"
