"""The benchmark's tables: each system's figures, and this runtime's ratio to each peer, pair by pair.

A ratio is "how many times better flash-vl is": peer time / our time for the time figures,
our tokens/s / peer tokens/s for decode, peer bytes / our bytes for memory.  Each is taken
between two systems measured minutes apart on the same machine, so machine drift mostly cancels.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from runtime.bench.workload import FIGURES, HIGHER_IS_BETTER, Report, Workload

COLUMNS = {  # figure -> header
    "vision_ms_per_tile": "vision ms/tile",
    "prefill_ms": "prefill ms",
    "ttft_ms": "TTFT ms",
    "decode_tokens_per_s": "decode tok/s",
    "host_overhead_ms": "host overhead ms/step",
}
RATIO_FIGURES = ("vision_ms_per_tile", "prefill_ms", "ttft_ms", "decode_tokens_per_s")


def ratio(ours: Report, peer: Report, figure: str) -> float | None:
    """>1: flash-vl is better by that factor (medians)."""
    a, b = ours.summary().get(figure), peer.summary().get(figure)
    if not a or not b or a["median"] <= 0 or b["median"] <= 0:
        return None
    return a["median"] / b["median"] if figure in HIGHER_IS_BETTER else b["median"] / a["median"]


def rss_ratio(ours: Report, peer: Report) -> float | None:
    return peer.peak_rss_bytes / ours.peak_rss_bytes if ours.peak_rss_bytes and peer.peak_rss_bytes else None


def ids_agree(ours: Report, peer: Report) -> str:
    """How many greedy ids of the last decode round match, from the first (same weights, same prompt)."""
    a, b = ours.token_ids, peer.token_ids
    if not a or not b:
        return "n/a"
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"{n}/{min(len(a), len(b))}"


def cell(summary: dict, figure: str) -> str:
    s = summary.get(figure)
    if not s:
        return "–"
    med, lo, hi = (num(s[k]) for k in ("median", "min", "max"))
    return med if s["n"] == 1 or lo == hi else f"{med} ({lo}–{hi})"


def num(x: float) -> str:
    """Three significant digits, no exponent: 5521, 38.2, 0.731."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}" if abs(x) >= 1 else f"{x:.3f}"


def gb(n: int) -> str:
    return f"{n / 1e9:.2f}" if n else "–"


def figures_table(reports: list[Report]) -> str:
    head = ["system", *(COLUMNS[f] for f in FIGURES), "peak RSS GB", "weights GB", "RSS / weights"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in reports:
        if r.skipped:
            continue
        s = r.summary()
        over = f"{r.peak_rss_bytes / r.weights_bytes:.2f}" if r.weights_bytes and r.peak_rss_bytes else "–"
        lines.append("| " + " | ".join([r.label, *(cell(s, f) for f in FIGURES), gb(r.peak_rss_bytes),
                                        gb(r.weights_bytes), over]) + " |")
    return "\n".join(lines)


def ratios_table(ours: Report, peers: list[Report]) -> str:
    head = ["flash-vl vs", *(COLUMNS[f] for f in RATIO_FIGURES), "peak RSS", "greedy ids equal"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in peers:
        if p.skipped:
            continue
        vals = [ratio(ours, p, f) for f in RATIO_FIGURES] + [rss_ratio(ours, p)]
        lines.append("| " + " | ".join([p.label, *("–" if v is None else f"{v:.2f}×" for v in vals),
                                        ids_agree(ours, p)]) + " |")
    return "\n".join(lines)


def skipped_lines(reports: list[Report]) -> list[str]:
    return [f"- {r.label}: skipped, {r.skipped}" for r in reports if r.skipped]


def machine() -> dict:
    """What the figures were measured on."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": round(mem / 2**30, 1),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def markdown(engines: list[dict], work: Workload, repeat: int = 1) -> str:
    """engines: [{"engine", "reports": [Report, ...]}] with flash-vl's report first."""
    m = machine()
    passes = f" in each of {repeat} passes" if repeat > 1 else ""
    out = [f"{work.prompt_tokens} prompt tokens, {work.new_tokens} new tokens, {work.threads} threads, "
           f"median (min–max) of {work.runs} runs after a warm-up{passes}; {m['cpu']}, {m['cores']} cores, "
           f"{m['memory_gb']} GB"]
    for e in engines:
        ours, peers = e["reports"][0], e["reports"][1:]
        out += ["", f"### {e['engine']} ({ours.notes[0] if ours.notes else ours.precision})", "",
                figures_table(e["reports"]), "", ratios_table(ours, peers)]
        skipped = skipped_lines(peers)
        if skipped:
            out += [""] + skipped
    out += ["", "Peak RSS is each process's own. flash-vl's (and its weights) include the vision graph; ORT GenAI's "
                "and llama.cpp's are a decoder's only; PyTorch's includes rebuilding the model from the weight "
                "source. Ratios above 1× favour flash-vl."]
    return "\n".join(out)
