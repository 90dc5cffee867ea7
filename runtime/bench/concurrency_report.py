"""The concurrency benchmark's tables (Markdown, to paste into docs/performance.md) and its JSON.

Per engine: each system's figures at each level N, then this runtime's ratio to each peer at each N
(aggregate decode: ours / theirs, >1 favours flash-vl).  The figures are defined in runtime.bench.levels.
"""

from __future__ import annotations

from dataclasses import asdict

from runtime.bench.levels import LevelsReport
from runtime.bench.report import gb, machine, num
from runtime.bench.workload import Workload

HEAD = ["system", "N", "aggregate decode tok/s", "× N=1", "full-batch decode tok/s", "× N=1", "total tok/s",
        "TTFT p50 / p90 ms",
        "end-to-end p50 / p90 ms", "peak RSS GB", "ids equal alone"]
RATIO_HEAD = ["N", "flash-vl aggregate tok/s", "peer aggregate tok/s", "flash-vl vs peer", "flash-vl full-batch tok/s",
              "peer full-batch tok/s", "flash-vl vs peer (full batch)", "flash-vl TTFT p50 ms",
              "peer TTFT p50 ms (text only)"]


def spread(s: dict | None) -> str:
    if not s:
        return "–"
    med, lo, hi = (num(s[k]) for k in ("median", "min", "max"))
    return med if s["n"] == 1 or lo == hi else f"{med} ({lo}–{hi})"


def quantiles(s: dict | None) -> str:
    return f"{num(s['p50'])} / {num(s['p90'])}" if s else "–"


def times(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def levels_table(reports: list[LevelsReport]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for r in reports:
        if r.skipped:
            continue
        for n, s in r.summary().items():
            equal, total = s["ids_equal_alone"]
            lines.append("| " + " | ".join([
                r.label, str(n), spread(s.get("aggregate_decode_tokens_per_s")), times(s["aggregate_vs_1"]),
                spread(s.get("full_batch_decode_tokens_per_s")), times(s["full_batch_vs_1"]),
                spread(s.get("total_tokens_per_s")), quantiles(s.get("ttft_ms")), quantiles(s.get("e2e_ms")),
                gb(s["peak_rss_bytes"]), f"{equal}/{total}"]) + " |")
    return "\n".join(lines)


def aggregate_ratio(ours: dict, peer: dict, name: str = "aggregate_decode_tokens_per_s") -> float | None:
    """Level summaries -> our aggregate decode / the peer's (medians); >1 favours flash-vl."""
    a, b = ours.get(name), peer.get(name)
    return a["median"] / b["median"] if a and b and b["median"] > 0 else None


def ratio_table(ours: LevelsReport, peer: LevelsReport) -> str:
    head = [h.replace("peer", peer.label) for h in RATIO_HEAD]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mine, theirs = ours.summary(), peer.summary()
    for n in sorted(set(mine) & set(theirs)):
        a, b = mine[n], theirs[n]
        lines.append("| " + " | ".join([
            str(n), spread(a.get("aggregate_decode_tokens_per_s")), spread(b.get("aggregate_decode_tokens_per_s")),
            times(aggregate_ratio(a, b)), spread(a.get("full_batch_decode_tokens_per_s")),
            spread(b.get("full_batch_decode_tokens_per_s")),
            times(aggregate_ratio(a, b, "full_batch_decode_tokens_per_s")),
            num(a["ttft_ms"]["p50"]) if a.get("ttft_ms") else "–",
            num(b["ttft_ms"]["p50"]) if b.get("ttft_ms") else "–"]) + " |")
    return "\n".join(lines)


def markdown(engines: list[dict], work: Workload) -> str:
    """engines: [{"engine", "reports": [LevelsReport, ...]}] with flash-vl's report first."""
    m = machine()
    out = [f"N requests at once, each {work.prompt_tokens} prompt ids (flash-vl: the 512x512 image + text; "
           f"llama.cpp: text) and {work.new_tokens} new tokens, greedy; {work.threads} threads; median (min–max) "
           f"of {work.runs} rounds after a warm-up round at each N; p50/p90 over every request of those rounds; "
           f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB"]
    for e in engines:
        ours, peers = e["reports"][0], e["reports"][1:]
        out += ["", f"### {e['engine']} ({ours.notes[0] if ours.notes else ours.precision})", "",
                levels_table(e["reports"])]
        for p in peers:
            if not p.skipped:
                out += ["", ratio_table(ours, p)]
        out += [f"- {r.label}: skipped, {r.skipped}" for r in e["reports"] if r.skipped]
        out += [f"- {r.label}: {note}" for r in e["reports"] for note in r.notes[1 if r is ours else 0:]]
    out += ["", "Aggregate decode tok/s: all tokens generated after each request's first, over the wall time from "
                "the first request's first token to the last request's last token. Total tok/s: all generated "
                "tokens over the wall time from submission to the last token. Peak RSS: the process's, up to and "
                "including that level. Ids equal alone: requests whose greedy ids equal their prompt's alone."]
    return "\n".join(out)


def as_json(engines: list[dict], work: Workload, levels: tuple[int, ...]) -> dict:
    return {"mode": "concurrency", "workload": asdict(work), "levels": list(levels), "machine": machine(),
            "engines": [{"engine": e["engine"],
                         "reports": [{**asdict(r), "summary": {str(n): s for n, s in r.summary().items()}}
                                     for r in e["reports"]]} for e in engines]}
