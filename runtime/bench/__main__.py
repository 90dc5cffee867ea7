"""`python -m runtime.bench`: this runtime against its peers, on the same weights, in one run.

    python -m runtime.bench --engine engines/flash-vl-2b-int4 [--engine DIR ...] [--peers torch,ortgenai,llama.cpp]
        [--prompt-tokens 290] [--new-tokens 32] [--runs 3] [--threads 2] [--json FILE] [--plot FILE.png]
    python -m runtime.bench --concurrency 1,2,4,8 --engine DIR [--engine DIR ...] [--peers llama.cpp] [...]

For each engine folder: this runtime, then each peer on the weights the folder was exported from
(the manifest's weight source), each in its own process, one after another:
    flash-vl   runtime.bench.ours             vision ms/tile, prefill, TTFT, decode tok/s, host overhead
    torch      export.peers.torch_eager       transformers Qwen2 + our PyTorch vision tower, eager
    ortgenai   export.peers.ortgenai          ONNX Runtime GenAI, built by its own model builder
    llama.cpp  export.peers.llama_cpp         llama-cpp-python on a GGUF written with the gguf package
A peer converts the weights first, in a process of its own, cached under --cache.  A peer whose
packages are missing is skipped with a note.  Prints each system's figures (median and spread after
a warm-up), peak RSS and bytes, then this runtime's ratio to each peer, pair by pair.

--concurrency N1,N2,...: N requests at once instead, at each level, all on one loaded model (continuous
batching), each engine and peer in its own process (figures defined in runtime.bench.levels):
    flash-vl   runtime.bench.concurrency          N threads calling FlashVL.generate(image, prompt) at once
    llama.cpp  export.peers.llama_cpp_batched     one llama_decode a step carrying every sequence (text only)
Prints aggregate decode tok/s, total tok/s, TTFT and end-to-end p50/p90 at each N, and our ratio to the
peer; --plot draws aggregate tok/s against N.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from runtime.bench import concurrency_report, plot
from runtime.bench.concurrency import check_prompt_tokens
from runtime.bench.levels import LevelsReport, levels_args, parse_levels
from runtime.bench.report import machine, markdown
from runtime.bench.workload import Report, Workload, worker_args
from runtime.cli_output import error_line
from runtime.cli_parser import CliParser
from runtime.errors import FlashVLError
from runtime.manifest import load_manifest

OURS = "runtime.bench.ours"
# peer -> (worker module, modules it needs, how to get them)
PEERS = {
    "torch": ("export.peers.torch_eager", ("torch", "transformers", "export"), 'pip install -e ".[export]"'),
    "ortgenai": ("export.peers.ortgenai", ("onnxruntime_genai", "torch", "transformers", "export"),
                 'pip install -e ".[export,bench]"'),
    "llama.cpp": ("export.peers.llama_cpp", ("llama_cpp", "gguf", "torch", "export"),
                  'pip install -e ".[export,bench]" llama-cpp-python (compiles llama.cpp)'),
}
LABELS = {"torch": "PyTorch eager", "ortgenai": "ORT GenAI", "llama.cpp": "llama.cpp"}
OURS_BATCHED = "runtime.bench.concurrency"
BATCHED_PEERS = {"llama.cpp": "export.peers.llama_cpp_batched"}  # peer -> its --concurrency worker


def missing(modules: tuple[str, ...]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def run_worker(module: str, engine: Path, work: Workload, cache: Path, *extra: str,
               parse=Report.from_json) -> tuple[int, Report | None]:
    """Run one worker process (its stderr passes through) -> (exit code, the report on its last stdout line)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # local files only, always
    proc = subprocess.run([sys.executable, "-m", module, *worker_args(engine, work, cache), *extra],
                          stdout=subprocess.PIPE, text=True, env=env)
    last = proc.stdout.strip().splitlines()[-1:]
    try:
        return proc.returncode, parse(last[0]) if last else None
    except ValueError:  # not a report: a --prepare run prints none unless it skips
        return proc.returncode, None


def bench_engine(engine: Path, peers: list[str], work: Workload, cache: Path, repeat: int = 1) -> list[Report]:
    """flash-vl's report first, then one per peer.  With repeat > 1 the whole sequence runs again, in fresh
    processes, and each system's rounds are pooled: a slow spell of the machine then falls on every system
    rather than on whichever ran during it."""
    passes = [_one_pass(engine, peers, work, cache) for _ in range(repeat)]
    return [merge(list(same)) for same in zip(*passes)]


def _one_pass(engine: Path, peers: list[str], work: Workload, cache: Path) -> list[Report]:
    code, ours = run_worker(OURS, engine, work, cache)
    if code != 0 or ours is None:
        raise FlashVLError(f"{engine}: this runtime's benchmark failed (its error is above)")
    reports = [ours]
    for name in peers:
        module, needs, install = PEERS[name]
        absent = missing(needs)
        if absent:
            reports.append(Report(system=name, label=LABELS[name], precision="",
                                  skipped=f"{', '.join(absent)} not installed ({install})"))
            continue
        code, report = run_worker(module, engine, work, cache, "--prepare")  # converts; a skip says why
        if code == 0 and report is None:
            code, report = run_worker(module, engine, work, cache)
        if code != 0 or report is None:
            report = Report(system=name, label=LABELS[name], precision="",
                            skipped=f"its worker failed (python -m {module}; the error is above)")
        reports.append(report)
    return reports


def bench_levels(engine: Path, peers: list[str], work: Workload, levels: tuple[int, ...],
                 cache: Path) -> list[LevelsReport]:
    """--concurrency: flash-vl's levels report first, then one per peer, each from its own process."""
    extra = levels_args(levels)
    code, ours = run_worker(OURS_BATCHED, engine, work, cache, *extra, parse=LevelsReport.from_json)
    if code != 0 or ours is None:
        raise FlashVLError(f"{engine}: this runtime's concurrency benchmark failed (its error is above)")
    reports = [ours]
    for name in peers:
        module, (_, needs, install) = BATCHED_PEERS[name], PEERS[name]
        absent = missing(needs)
        if absent:
            reports.append(LevelsReport(system=name, label=LABELS[name], precision="",
                                        skipped=f"{', '.join(absent)} not installed ({install})"))
            continue
        code, report = run_worker(module, engine, work, cache, *extra, "--prepare", parse=LevelsReport.from_json)
        if code == 0 and report is None:
            code, report = run_worker(module, engine, work, cache, *extra, parse=LevelsReport.from_json)
        if code != 0 or report is None:
            report = LevelsReport(system=name, label=LABELS[name], precision="",
                                  skipped=f"its worker failed (python -m {module}; the error is above)")
        reports.append(report)
    return reports


def merge(reports: list[Report]) -> Report:
    """One system's reports from several passes -> one: rounds pooled, the highest peak RSS, the last ids."""
    ran = [r for r in reports if not r.skipped]
    if not ran:
        return reports[0]
    out = dataclasses.replace(ran[-1], rounds=[x for r in ran for x in r.rounds],
                              peak_rss_bytes=max(r.peak_rss_bytes for r in ran))
    if len(ran) < len(reports):
        out.notes = [*out.notes, f"{len(reports) - len(ran)} of {len(reports)} passes failed"]
    return out


def parse_peers(text: str | None, concurrency: bool = False) -> list[str]:
    known = BATCHED_PEERS if concurrency else PEERS
    if text is None:
        return list(known)
    if text in ("", "none"):
        return []
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PEERS]
    if unknown:
        raise FlashVLError(f"--peers: unknown peer {', '.join(map(repr, unknown))}; choose from "
                           f"{','.join(PEERS)} (comma-separated), or none")
    unbatched = [p for p in names if p not in known]
    if unbatched:
        raise FlashVLError(f"--peers {','.join(unbatched)}: no continuous-batching peer for it; with --concurrency "
                           f"choose from {','.join(BATCHED_PEERS)}, or none")
    return names


def main(argv=None) -> int:
    ap = CliParser(prog="python -m runtime.bench", description=__doc__)
    ap.add_argument("--engine", type=Path, action="append", required=True, help="engine folder (repeatable)")
    ap.add_argument("--peers", help=f"comma-separated, from {','.join(PEERS)} (default: all; with --concurrency: "
                                    f"{','.join(BATCHED_PEERS)}); or none")
    ap.add_argument("--concurrency", metavar="N1,N2,...",
                    help="measure N requests at once on one model at each level (e.g. 1,2,4,8) instead")
    ap.add_argument("--prompt-tokens", type=int, default=Workload.prompt_tokens)
    ap.add_argument("--new-tokens", type=int, default=Workload.new_tokens)
    ap.add_argument("--runs", type=int, default=Workload.runs, help="measured rounds after one warm-up")
    ap.add_argument("--threads", type=int, default=Workload.threads)
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the whole sequence this many times, in fresh processes, and pool the rounds")
    ap.add_argument("--cache", type=Path, default=Path("engines/.bench-cache"),
                    help="converted peer models (default engines/.bench-cache)")
    ap.add_argument("--json", type=Path, help="write every figure of every round here")
    ap.add_argument("--plot", type=Path, help="draw the comparison as a PNG (needs matplotlib: the bench extra)")
    args = ap.parse_args(argv)
    try:
        work = Workload(args.prompt_tokens, args.new_tokens, args.runs, args.threads)
        if args.repeat < 1:
            raise FlashVLError(f"--repeat must be at least 1, got {args.repeat}")
        levels = parse_levels(args.concurrency) if args.concurrency is not None else None
        if levels and args.repeat != 1:
            raise FlashVLError("--repeat is for the single-request bench; with --concurrency use --runs")
        peers = parse_peers(args.peers, concurrency=levels is not None)
        if args.plot and not plot.available():
            raise FlashVLError('--plot needs matplotlib: pip install -e ".[bench]"')
        if args.plot and args.plot.suffix.lower() != ".png":
            raise FlashVLError(f"--plot {args.plot}: give a .png file name")
        for flag, path in (("--json", args.json), ("--plot", args.plot)):
            if path is not None and not path.resolve().parent.is_dir():
                raise FlashVLError(f"{flag} {path}: folder {path.parent} does not exist; create it or pick another")
        for engine in args.engine:
            m = load_manifest(engine)  # fails early, with its own message, on a wrong folder
            if work.prompt_tokens + work.new_tokens > m.decoder.max_seq_len:
                raise FlashVLError(f"--prompt-tokens {work.prompt_tokens} + --new-tokens {work.new_tokens} exceed "
                                   f"{engine}'s context window ({m.decoder.max_seq_len}); ask for fewer")
            if levels:
                check_prompt_tokens(engine, m, work.prompt_tokens)
        t0 = time.perf_counter()
        if levels:
            engines = [{"engine": str(e), "reports": bench_levels(e, peers, work, levels, args.cache)}
                       for e in args.engine]
        else:
            engines = [{"engine": str(e), "reports": bench_engine(e, peers, work, args.cache, args.repeat)}
                       for e in args.engine]
    except (FlashVLError, ValueError) as e:
        print(error_line(e), file=sys.stderr)
        return 2
    print(concurrency_report.markdown(engines, work) if levels else markdown(engines, work, args.repeat))
    print(f"\nbench: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    try:
        if levels:
            write_level_outputs(args, engines, work, levels)
        else:
            write_outputs(args, engines, work)
    except OSError as e:
        print(f"error: cannot write the results ({e}); the tables above are complete", file=sys.stderr)
        return 2
    return 0


def write_outputs(args, engines: list[dict], work: Workload) -> None:
    if args.json:
        args.json.write_text(json.dumps({
            "workload": asdict(work), "repeat": args.repeat, "machine": machine(),
            "engines": [{"engine": e["engine"], "reports": [{**asdict(r), "summary": r.summary()}
                                                            for r in e["reports"]]} for e in engines]}, indent=1))
    if args.plot:
        m = machine()
        plot.draw(engines, args.plot, f"flash-vl and its peers: {work.prompt_tokens} prompt + {work.new_tokens} "
                                      f"new tokens, {work.threads} threads, {m['cpu']}")


def write_level_outputs(args, engines: list[dict], work: Workload, levels: tuple[int, ...]) -> None:
    if args.json:
        args.json.write_text(json.dumps(concurrency_report.as_json(engines, work, levels), indent=1))
    if args.plot:
        plot.draw_levels(engines, args.plot, f"N requests at once on one model: {work.prompt_tokens} prompt + "
                                             f"{work.new_tokens} new tokens each, {work.threads} threads, "
                                             f"{machine()['cpu']}")


if __name__ == "__main__":
    sys.exit(main())
