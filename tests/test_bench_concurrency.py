"""`python -m runtime.bench --concurrency` and `python -m runtime.bench.camera` on the tiny engine.

The parity check is real: every request of a batch must carry exactly the greedy ids its prompt gets when
it runs alone, recomputed here in this process, and the prompts are distinct so a mix-up would show.  The
llama.cpp peer runs when llama-cpp-python is installed, and is skipped with a note otherwise.  Timings are
only checked for sanity (ordered, positive), never against a goal.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import cv2
import pytest

from tests.extras import needs

needs("export")  # the llama.cpp peer writes its GGUF from the engine's weights with torch

from runtime.bench import concurrency_report as crep
from runtime.bench.concurrency import fitted_prompt, request_prompts
from runtime.bench.levels import LevelsReport, parse_levels, percentile, request_record, round_figures
from runtime.bench.workload import Workload, bench_image
from tests.conftest import assert_one_line_error, run_cli
from tests.video_files import write_video

pytestmark = pytest.mark.bench  # .ci/run runs these again once the [bench] extra is installed

HAVE_PLOT = importlib.util.find_spec("matplotlib") is not None
HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
PROMPT_TOKENS, NEW_TOKENS = 70, 6


@pytest.fixture(scope="module")
def levels_run(tiny_engine, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("concurrency")
    out, png = tmp / "levels.json", tmp / "levels.png"
    args = ["-m", "runtime.bench", "--concurrency", "1,2", "--engine", str(tiny_engine), "--prompt-tokens",
            str(PROMPT_TOKENS), "--new-tokens", str(NEW_TOKENS), "--runs", "2", "--threads", "2", "--cache",
            str(tmp / "cache"), "--json", str(out)]
    proc = run_cli(*args, *(["--plot", str(png)] if HAVE_PLOT else []), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(out.read_text()), png


def _reports(data) -> dict[str, dict]:
    return {r["system"]: r for r in data["engines"][0]["reports"]}


def test_json_has_every_level_round_and_request(levels_run):
    _, data, _ = levels_run
    assert data["mode"] == "concurrency" and data["levels"] == [1, 2]
    assert data["workload"] == {"prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS, "runs": 2, "threads": 2}
    ours = _reports(data)["flash-vl"]
    assert [lv["concurrency"] for lv in ours["levels"]] == [1, 2]
    for lv in ours["levels"]:
        assert len(lv["rounds"]) == 2 and lv["peak_rss_bytes"] > 0
        for rnd in lv["rounds"]:
            assert len(rnd["requests"]) == lv["concurrency"]
            assert {"aggregate_decode_tokens_per_s", "total_tokens_per_s", "wall_s", "decode_window_s"} <= set(rnd)
    assert set(ours["summary"]) == {"1", "2"}
    s1, s2 = ours["summary"]["1"], ours["summary"]["2"]
    assert s1["aggregate_vs_1"] == pytest.approx(1.0) and s2["aggregate_vs_1"] > 0
    assert s2["requests"] == 4 and set(s2["ttft_ms"]) == {"p50", "p90", "n"} and s2["ttft_ms"]["n"] == 4


def test_token_counts_add_up(levels_run):
    _, data, _ = levels_run
    for report in data["engines"][0]["reports"]:
        if report["skipped"]:
            continue
        for lv in report["levels"]:
            for rnd in lv["rounds"]:
                reqs = rnd["requests"]
                assert rnd["tokens"] == sum(r["tokens"] for r in reqs)
                assert rnd["decode_steps"] == sum(r["decode_steps"] for r in reqs)
                for r in reqs:
                    assert r["tokens"] == len(r["token_ids"])
                    stopped = r["finish_reason"] == "stop"  # the stop token is a step, not an id
                    assert r["tokens"] == (len(r["token_ids"]) if stopped else NEW_TOKENS)
                    assert r["decode_steps"] == r["tokens"] - 1 + stopped
                    assert 0 <= r["ttft_ms"] <= r["e2e_ms"] <= rnd["wall_s"] * 1e3 + 1e-6
                assert rnd["decode_window_s"] <= rnd["wall_s"]
                if rnd["decode_steps"]:
                    assert rnd["aggregate_decode_tokens_per_s"] == pytest.approx(
                        rnd["decode_steps"] / rnd["decode_window_s"])
                if lv["concurrency"] == 1 and rnd["decode_steps"]:  # alone, every decode step is a full batch
                    assert rnd["full_batch_decode_tokens_per_s"] > 0


def test_every_batched_request_gets_its_ids_alone(levels_run, tiny_engine):
    """The greedy ids each prompt gets alone, recomputed here, equal those of every request of every batch."""
    from runtime.api import FlashVL

    _, data, _ = levels_run
    with FlashVL.load(tiny_engine, threads=1, backend="onnxruntime") as vl:
        prompts = request_prompts(vl.tokenizer, vl.manifest, 2, PROMPT_TOKENS)
        alone = [vl.generate(bench_image(), p, max_new_tokens=NEW_TOKENS).token_ids for p in prompts]
    assert alone[0] != alone[1]  # distinct prompts, distinct ids: a swap between sequences would show
    for lv in _reports(data)["flash-vl"]["levels"]:
        for rnd in lv["rounds"]:
            assert [r["token_ids"] for r in rnd["requests"]] == alone[:lv["concurrency"]]
            assert all(r["ids_equal_alone"] for r in rnd["requests"])


def test_peer_measured_or_skipped_with_a_note(levels_run):
    proc, data, _ = levels_run
    peer = _reports(data)["llama.cpp"]
    if not HAVE_LLAMA:
        assert "not installed" in peer["skipped"] and "- llama.cpp: skipped" in proc.stdout
        return
    assert not peer["skipped"], peer["skipped"]
    assert [lv["concurrency"] for lv in peer["levels"]] == [1, 2]
    assert all(r["tokens"] == NEW_TOKENS for lv in peer["levels"] for rnd in lv["rounds"] for r in rnd["requests"])
    assert "flash-vl vs llama.cpp F32" in proc.stdout  # the ratio table, one row per level
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(rows) == 2 and all("×" in row for row in rows)


def test_tables_print_each_level(levels_run):
    proc, _, _ = levels_run
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| flash-vl fp32 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "2"]
    assert rows[0].split("|")[4].strip() == "1.00×"  # N=1 against itself
    assert "Aggregate decode tok/s:" in proc.stdout


@pytest.mark.skipif(not HAVE_PLOT, reason="matplotlib (the bench extra) is not installed")
def test_plot_is_a_png(levels_run):
    _, _, png = levels_run
    img = cv2.imread(str(png))
    assert img is not None and img.shape[1] >= 800 and img.std() > 10


def test_missing_peer_is_skipped_with_a_note(tiny_engine, tmp_path, monkeypatch):
    import runtime.bench.__main__ as bench

    monkeypatch.setitem(bench.PEERS, "llama.cpp", ("export.peers.llama_cpp", ("no_such_module_xyz",),
                                                   "pip install xyz"))
    work = Workload(PROMPT_TOKENS, 3, 1, 1)
    reports = bench.bench_levels(tiny_engine, ["llama.cpp"], work, (1,), tmp_path)
    assert reports[0].system == "flash-vl" and reports[0].levels[0]["rounds"]
    assert reports[1].skipped == "no_such_module_xyz not installed (pip install xyz)"
    assert "- llama.cpp: skipped, no_such_module_xyz not installed" in crep.markdown(
        [{"engine": "e", "reports": reports}], work)


@pytest.mark.parametrize("args,needle", [
    (["--concurrency", "0,2"], "--concurrency must be"),
    (["--concurrency", "1,two"], "--concurrency must be"),
    (["--concurrency", "1,2", "--peers", "torch"], "no continuous-batching peer"),
    (["--concurrency", "1,2", "--repeat", "2"], "--repeat"),
    (["--concurrency", "1,2", "--prompt-tokens", "20"], "too few"),
])
def test_bad_arguments_are_one_line(tiny_engine, args, needle):
    assert_one_line_error(run_cli("-m", "runtime.bench", "--engine", str(tiny_engine), *args), needle)


# ----------------------------------------------------------------------------- the camera case


@pytest.fixture(scope="module")
def short_video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "short.avi", "MJPG", (96, 64), 10.0, 12)


def test_camera_streams(tiny_engine, short_video, tmp_path):
    out = tmp_path / "camera.json"
    proc = run_cli("-m", "runtime.bench.camera", "--engine", str(tiny_engine), "--video", str(short_video),
                   "--streams", "1,2", "--frames", "3", "--new-tokens", "4", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["streams"], r["captions"]) for r in rows] == [(1, 3), (2, 6)]
    two = rows[1]["run"]["streams"]
    media = [[e["media_s"] for e in s["events"]] for s in two]
    assert media[0] == pytest.approx([0.0, 0.3, 0.6]) and media[1] == pytest.approx([0.1, 0.4, 0.7])  # offset by one
    for r in rows:
        assert r["captions_per_s"] > 0 and 0 < r["latency_ms_p50"] <= r["latency_ms_p90"]
        assert all(1 <= e["tokens"] <= 4 for s in r["run"]["streams"] for e in s["events"])
    table = [line for line in proc.stdout.splitlines() if line.startswith("| tiny |")]
    assert len(table) == 2


@pytest.mark.parametrize("args,needle", [
    (["--video", "no-such.mp4"], "no such file"),
    (["--streams", "1,0"], "--streams must be"),
    (["--frames", "40"], "need at least"),
])
def test_camera_bad_arguments_are_one_line(tiny_engine, short_video, args, needle):
    base = ["--video", str(short_video)] if "--video" not in args else []
    proc = run_cli("-m", "runtime.bench.camera", "--engine", str(tiny_engine), *base, *args)
    assert_one_line_error(proc, needle)


# ----------------------------------------------------------------------------- pure functions


def test_round_figures_follow_their_definitions():
    reqs = [request_record(first_s=1.0, last_s=3.0, tokens=5, decode_steps=4, ids_equal_alone=True),
            request_record(first_s=2.0, last_s=5.0, tokens=7, decode_steps=6, ids_equal_alone=False)]
    f = round_figures(reqs)
    assert f["full_batch_decode_tokens_per_s"] is None  # no step carried both alone
    assert round_figures(reqs, (3, 1.5))["full_batch_decode_tokens_per_s"] == pytest.approx(2 * 3 / 1.5)
    assert f["aggregate_decode_tokens_per_s"] == pytest.approx(10 / 4.0)  # steps / (last last - first first)
    assert f["total_tokens_per_s"] == pytest.approx(12 / 5.0)  # tokens / wall from submission
    assert f["decode_window_s"] == 4.0 and f["wall_s"] == 5.0 and f["concurrency"] == 2
    assert reqs[1]["ttft_ms"] == 2000.0 and reqs[1]["e2e_ms"] == 5000.0


def test_level_summary_and_ratio():
    def level(n, agg, ttfts):
        reqs = [request_record(first_s=t, last_s=t + 1.0, tokens=3, decode_steps=2, ids_equal_alone=True)
                for t in ttfts]
        rnd = round_figures(reqs, (4, 2.0 / n))  # 4 full-batch steps of n tokens in 2/n s: 2 n^2 tok/s
        rnd["aggregate_decode_tokens_per_s"] = agg
        return {"concurrency": n, "rounds": [rnd], "peak_rss_bytes": 1}

    ours = LevelsReport("flash-vl", "flash-vl fp32", "fp32", levels=[level(1, 10.0, [1.0]), level(2, 15.0, [1.0, 2.0])])
    peer = LevelsReport("llama.cpp", "llama.cpp F32", "F32", levels=[level(1, 20.0, [0.5]), level(2, 30.0, [0.5, 1])])
    s = ours.summary()
    assert s[2]["aggregate_vs_1"] == pytest.approx(1.5) and s[2]["ids_equal_alone"] == [2, 2]
    assert s[2]["ttft_ms"]["p50"] == pytest.approx(1500.0)
    assert crep.aggregate_ratio(s[2], peer.summary()[2]) == pytest.approx(0.5)
    table = crep.ratio_table(ours, peer)
    assert s[2]["full_batch_decode_tokens_per_s"]["median"] == pytest.approx(8.0) and s[2]["full_batch_vs_1"] == 4
    assert "| 2 | 15.0 | 30.0 | 0.50× | 8.00 | 8.00 | 1.00× | 1500 | 750 |" in table
    assert LevelsReport.from_json(ours.to_json()) == ours


def test_percentile_and_levels_parsing():
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile(list(range(11)), 90) == pytest.approx(9.0)
    assert parse_levels("4, 1,2,2") == (1, 2, 4)
    for bad in ("", "0", "1,65", "a"):
        with pytest.raises(ValueError, match="--concurrency must be"):
            parse_levels(bad)


def test_fitted_prompt_is_exact_or_says_why():
    def count(text):  # a stand-in tokenizer: 10 ids of template and image, one per word, one per digit
        return 10 + len(re.findall(r"[a-z]+|[0-9]", text))

    for n in (11, 12, 25):
        assert count(fitted_prompt(count, n, seed=3)) == n
    assert fitted_prompt(count, 25, seed=1) != fitted_prompt(count, 25, seed=2)
    with pytest.raises(Exception, match="ask for at least 11"):
        fitted_prompt(count, 10, seed=0)
