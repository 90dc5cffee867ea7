"""`--plot FILE.png`: bars per phase (decode, prefill, TTFT) and precision, one bar per system; with
--concurrency (`draw_levels`), aggregate tokens/s against the number of requests at once.

matplotlib is the `bench` extra's; `available()` lets the CLI refuse --plot before measuring anything.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from runtime.bench.report import num
from runtime.bench.workload import Report

PANELS = (  # figure, title, scale to the plotted unit
    ("decode_tokens_per_s", "decode, tokens/s (higher is better)", 1.0),
    ("prefill_ms", "prefill, s (lower is better)", 1e-3),
    ("ttft_ms", "TTFT: 512x512 image + 30 tokens, s (lower is better)", 1e-3),
)
SYSTEMS = ("flash-vl", "torch", "ortgenai", "llama.cpp")
COLOURS = {"flash-vl": "#1f77b4", "torch": "#7f7f7f", "ortgenai": "#2ca02c", "llama.cpp": "#d62728"}
NAMES = {"flash-vl": "flash-vl (this runtime)", "torch": "PyTorch eager", "ortgenai": "ONNX Runtime GenAI",
         "llama.cpp": "llama.cpp"}


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def draw(engines: list[dict], path: Path, title: str) -> None:
    """engines: [{"engine", "reports"}]; one group of bars per engine (labelled by its decoder precision)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    groups = [e["reports"][0].precision for e in engines]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5.2 * len(PANELS), 4.2))
    width = 0.8 / len(SYSTEMS)
    for ax, (figure, panel, scale) in zip(axes, PANELS):
        for k, system in enumerate(SYSTEMS):
            xs, ys, lo, hi, labels = [], [], [], [], []
            for g, e in enumerate(engines):
                r = _report(e["reports"], system)
                s = r.summary().get(figure) if r else None
                if not s:
                    continue
                xs.append(g + (k - (len(SYSTEMS) - 1) / 2) * width)
                ys.append(s["median"] * scale)
                lo.append((s["median"] - s["min"]) * scale)
                hi.append((s["max"] - s["median"]) * scale)
                labels.append(r.precision)
            if not xs:
                continue
            bars = ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, color=COLOURS[system], label=NAMES[system])
            for bar, y, label in zip(bars, ys, labels):
                ax.annotate(f"{num(y)}\n{label}", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom",
                            fontsize=6.5, xytext=(0, 2), textcoords="offset points")
        ax.set_title(panel, fontsize=9)
        ax.set_xticks(range(len(groups)), [f"{g} engine" for g in groups])
        ax.margins(y=0.2)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _report(reports: list[Report], system: str) -> Report | None:
    return next((r for r in reports if r.system == system and not r.skipped), None)


def draw_levels(engines: list[dict], path: Path, title: str) -> None:
    """The concurrency mode: aggregate decode tok/s (median, min–max bars) against N, one panel per engine, a
    line per system; full-batch decode dashed and total tok/s dotted in the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(engines), figsize=(max(7.5, 5.2 * len(engines)), 4.6), squeeze=False)
    for ax, e in zip(axes[0], engines):
        for r in e["reports"]:
            if r.skipped:
                continue
            summary = r.summary()
            ns = [n for n in summary if "aggregate_decode_tokens_per_s" in summary[n]]
            agg = [summary[n]["aggregate_decode_tokens_per_s"] for n in ns]
            ys = [a["median"] for a in agg]
            err = [[a["median"] - a["min"] for a in agg], [a["max"] - a["median"] for a in agg]]
            colour = COLOURS.get(r.system, "#000000")
            ax.errorbar(ns, ys, yerr=err, capsize=3, marker="o", color=colour,
                        label=f"{NAMES.get(r.system, r.system)} {r.precision}: aggregate decode")
            for n, y in zip(ns, ys):
                ax.annotate(num(y), (n, y), fontsize=6.5, xytext=(3, 3), textcoords="offset points")
            full = [(n, summary[n]["full_batch_decode_tokens_per_s"]["median"]) for n in summary
                    if "full_batch_decode_tokens_per_s" in summary[n]]
            if full:
                ax.plot(*zip(*full), linestyle="--", marker="s", markersize=4, color=colour,
                        label=f"{NAMES.get(r.system, r.system)} {r.precision}: full-batch decode steps")
            total = [(n, summary[n]["total_tokens_per_s"]["median"]) for n in summary
                     if "total_tokens_per_s" in summary[n]]
            if total:
                ax.plot(*zip(*total), linestyle=":", marker=".", color=colour,
                        label=f"{NAMES.get(r.system, r.system)} {r.precision}: total (image and prefill included)")
        ax.set_xscale("log", base=2)
        levels = sorted({n for r in e["reports"] if not r.skipped for n in r.summary()})
        ax.set_xticks(levels, [str(n) for n in levels])
        ax.set_xlabel("requests at once (N)")
        ax.set_ylabel("tokens/s (higher is better)")
        ax.set_title(f"{e['reports'][0].precision} engine", fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper left")
    fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
