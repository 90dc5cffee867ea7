"""The concurrency benchmark's figures: what one round of N requests at once measured, and their summary.

A worker (this runtime's runtime.bench.concurrency, the peer export.peers.llama_cpp_batched) runs, for each
level N of `--levels`, one warm-up round and then R measured rounds; a round submits N requests at the same
moment, t = 0, and records for each request, on one clock:

    first_s  when its first generated token was sampled (the end of its prefill)
    last_s   when its last token was sampled
    tokens   generated ids (its first included);  decode_steps: the steps after the first token

From these, per round:
    aggregate decode tok/s = sum(decode_steps) / (max(last_s) - min(first_s))
        every token sampled after a request's first, over the wall interval from the first request's first
        token to the last request's last token: all the decoding the round did, including the steps that
        ran while a later request was still in its prefill (so a scheduler that holds decodes back for a
        prefill pays for it here).  At N = 1 it is the single-request bench's decode tok/s.
    total tok/s = sum(tokens) / wall, wall = max(last_s): everything from submission to the last token
        (image encoding and prefills included), the throughput a client sees.
    full-batch decode tok/s = N x steps / seconds over the decoder calls that carried exactly the N
        sequences' next tokens and nothing else (no prefill rows): the batched step rate itself, which
        the aggregate figure dilutes with the prefills of later requests when prompts are long.
and per request: TTFT = first_s (queueing, image, prefill), end-to-end = last_s.

Per level: aggregate and total tok/s as median (min-max) over rounds; TTFT and end-to-end as p50/p90 over
every request of every measured round; the process's peak RSS after the level (levels run in ascending
order, so it is the peak up to and including N); and how many requests got exactly the greedy ids that
the same prompt gets alone (`ids_equal_alone`), the batching's parity check.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass, field

import numpy as np

from runtime.bench.workload import JsonReport, Workload, emit_line, worker_parser, workload_of
from runtime.cli_output import error_line

LEVELS_VERSION = 1
DEFAULT_LEVELS = (1, 2, 4, 8)
MAX_LEVEL = 64  # threads one worker starts at once


def parse_levels(text: str, flag: str = "--concurrency") -> tuple[int, ...]:
    """"1,2,4,8" -> (1, 2, 4, 8): ascending, each once."""
    try:
        levels = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        levels = []
    if not levels or not 1 <= levels[0] <= levels[-1] <= MAX_LEVEL:
        raise ValueError(f"{flag} must be comma-separated counts in 1..{MAX_LEVEL}, e.g. 1,2,4,8; got {text!r}")
    return tuple(levels)


def request_record(first_s: float, last_s: float, tokens: int, decode_steps: int, ids_equal_alone: bool,
                   **extra) -> dict:
    """One request of a round; times in seconds from the round's submission."""
    assert 0 <= first_s <= last_s, (first_s, last_s)
    return {"first_s": first_s, "last_s": last_s, "ttft_ms": first_s * 1e3, "e2e_ms": last_s * 1e3,
            "tokens": tokens, "decode_steps": decode_steps, "ids_equal_alone": ids_equal_alone, **extra}


def round_figures(requests: list[dict], full_batch: tuple[int, float] | None = None) -> dict:
    """A round's requests -> its figures (the definitions are in this module's docstring); full_batch: the
    (steps, seconds) of the round's decoder calls that carried all N sequences' next tokens and nothing else."""
    first = min(r["first_s"] for r in requests)
    last = max(r["last_s"] for r in requests)
    steps = sum(r["decode_steps"] for r in requests)
    tokens = sum(r["tokens"] for r in requests)
    window = last - first
    return {"concurrency": len(requests), "wall_s": last, "decode_window_s": window, "tokens": tokens,
            "decode_steps": steps, "aggregate_decode_tokens_per_s": steps / window if steps and window > 0 else None,
            "total_tokens_per_s": tokens / last if last > 0 else None, "requests": requests,
            "full_batch_decode_tokens_per_s": (len(requests) * full_batch[0] / full_batch[1]
                                               if full_batch and full_batch[0] and full_batch[1] > 0 else None)}


@dataclass
class LevelsReport(JsonReport):
    """What one system measured at each level.  `levels`: one dict per N, ascending:
    {"concurrency": N, "rounds": [round_figures(...), ...], "peak_rss_bytes": int}."""

    system: str  # "flash-vl" | "llama.cpp"
    label: str
    precision: str
    version: str = ""
    levels: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str = ""
    version_schema: int = LEVELS_VERSION
    SCHEMA = LEVELS_VERSION  # not a field: what from_json accepts


    def level(self, n: int) -> dict | None:
        return next((lv for lv in self.levels if lv["concurrency"] == n), None)

    def summary(self) -> dict[int, dict]:
        """{N: level_summary(...)}, with each level's aggregate decode as a multiple of N = 1's."""
        out = {lv["concurrency"]: level_summary(lv) for lv in self.levels}
        for name, key in (("aggregate_decode_tokens_per_s", "aggregate_vs_1"),
                          ("full_batch_decode_tokens_per_s", "full_batch_vs_1")):
            base = out.get(1, {}).get(name)
            for s in out.values():
                agg = s.get(name)
                s[key] = agg["median"] / base["median"] if agg and base and base["median"] > 0 else None
        return out


def level_summary(level: dict) -> dict:
    rounds = level["rounds"]
    requests = [r for rnd in rounds for r in rnd["requests"]]
    out = {"rounds": len(rounds), "requests": len(requests), "peak_rss_bytes": level.get("peak_rss_bytes", 0),
           "ids_equal_alone": [sum(bool(r["ids_equal_alone"]) for r in requests), len(requests)]}
    for name in ("aggregate_decode_tokens_per_s", "total_tokens_per_s", "full_batch_decode_tokens_per_s"):
        values = [r[name] for r in rounds if r.get(name) is not None]
        if values:
            out[name] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                         "n": len(values)}
    for name in ("ttft_ms", "e2e_ms"):
        values = [r[name] for r in requests]
        if values:
            out[name] = {"p50": percentile(values, 50), "p90": percentile(values, 90), "n": len(values)}
    return out


def percentile(values: list[float], q: float) -> float:
    """NumPy's default (linear) percentile: p50 of [1, 2, 3, 4] is 2.5, p90 of ten values lies between the two
    highest."""
    return float(np.percentile(np.asarray(values, np.float64), q))


# ----------------------------------------------------------------------------- the workers' CLI


def levels_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    ap = worker_parser(prog, doc)
    ap.add_argument("--levels", default=",".join(map(str, DEFAULT_LEVELS)), help="requests at once, e.g. 1,2,4,8")
    return ap


def levels_args(levels: tuple[int, ...]) -> list[str]:
    return ["--levels", ",".join(map(str, levels))]


def levels_worker_main(prog: str, doc: str, measure, prepare=None, skip=None, argv=None) -> int:
    """A levels worker's main(): as workload.worker_main, with --levels; `measure(engine, work, levels, cache)`
    and `skip(args)` return a LevelsReport, printed as the last line of stdout."""
    from runtime.errors import FlashVLError

    args = levels_parser(prog, doc).parse_args(argv)
    try:
        levels = parse_levels(args.levels, "--levels")
        work: Workload = workload_of(args)
        skipped = skip(args) if skip else None
        if skipped is not None:
            return emit_line(skipped.to_json())
        if args.prepare:
            if prepare:
                prepare(args.engine, args.cache)
            return 0
        return emit_line(measure(args.engine, work, levels, args.cache).to_json())
    except (FlashVLError, ValueError, OSError) as e:
        print(error_line(e), file=sys.stderr)
        return 2
