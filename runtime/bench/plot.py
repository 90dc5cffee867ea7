"""`--plot FILE.png`: bars per phase (decode, prefill, TTFT) and precision, one bar per system.

matplotlib is the `bench` extra's; `available()` lets the CLI refuse --plot before measuring anything.
"""

from __future__ import annotations

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
