"""The benchmark's workload and the report every measured system returns.

Each system (this runtime, and each peer) runs in its own process, one after another, so each
has its own peak RSS and none shares the cores with another.  A worker is a module run as

    python -m MODULE --engine DIR --prompt-tokens N --new-tokens M --runs R --threads T --cache DIR

and prints one JSON line, a `Report`, as the last line of its stdout (progress goes to stderr).
A peer that converts the weights first (a transformers checkpoint, ONNX Runtime GenAI's build, a
GGUF) is run once more before, with `--prepare`: it converts into the cache and exits, so that
the conversion's memory never counts in the measuring process's peak RSS.

The work is the same for every system:
    decoder  a prompt of N token ids (`prompt_ids`: deterministic, ordinary tokens) -> prefill,
             then M greedy steps with no stop token: prefill ms, decode tokens/s, host overhead
    image    one 512x512 image (`bench_image`) through the vision graph: ms per tile; then the image
             + TTFT_TEXT_TOKENS text tokens -> first token: TTFT (systems with a vision tower only)
One warm-up round, then R measured rounds; each figure is summarised as median and spread.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from runtime.cli_output import error_line
from runtime.cli_parser import CliParser

REPORT_VERSION = 1
TTFT_TEXT_TOKENS = 30  # text tokens beside the image for the TTFT figure
IMAGE_SIZE = 512  # the TTFT image is 512x512 (one tile of the static model)

# The figures of one measured round; a system leaves out what it cannot measure.
FIGURES = ("vision_ms_per_tile", "prefill_ms", "ttft_ms", "decode_tokens_per_s", "host_overhead_ms")
# Higher is better only for throughput; every other figure is a time.
HIGHER_IS_BETTER = {"decode_tokens_per_s"}


@dataclass(frozen=True)
class Workload:
    prompt_tokens: int = 290
    new_tokens: int = 32
    runs: int = 3
    threads: int = 2

    def __post_init__(self):
        for name, low in (("prompt_tokens", 1), ("new_tokens", 2), ("runs", 1), ("threads", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(self, name)}")


@dataclass
class JsonReport:
    """A worker's report as the one JSON line it prints: written whole, read back with its schema checked."""

    SCHEMA = 0  # the subclass's version_schema

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str):
        data = json.loads(text)
        if data.get("version_schema") != cls.SCHEMA:
            raise ValueError(f"{cls.__name__} schema {data.get('version_schema')!r}, expected {cls.SCHEMA}")
        return cls(**data)


@dataclass
class Report(JsonReport):
    """What one system measured.  `rounds` holds one dict of FIGURES per measured round."""

    system: str  # "flash-vl" | "torch" | "ortgenai" | "llama.cpp"
    label: str  # what the table shows, e.g. "llama.cpp Q4_0"
    precision: str  # the weights' precision as the system names it
    version: str = ""
    rounds: list[dict] = field(default_factory=list)
    peak_rss_bytes: int = 0
    files_bytes: int = 0  # the model files the system loads
    weights_bytes: int = 0  # bytes of the weights at this precision (the RSS goal's yardstick)
    token_ids: list[int] = field(default_factory=list)  # greedy ids of the last decode round
    notes: list[str] = field(default_factory=list)
    skipped: str = ""  # why the system did not run (then nothing else is filled)
    version_schema: int = REPORT_VERSION
    SCHEMA = REPORT_VERSION  # not a field: what from_json accepts


    def summary(self) -> dict[str, dict]:
        """{figure: {"median", "min", "max", "n"}} over the measured rounds."""
        return summarise(self.rounds)


def summarise(rounds: list[dict]) -> dict[str, dict]:
    out = {}
    for name in FIGURES:
        values = [r[name] for r in rounds if r.get(name) is not None]
        if values:
            out[name] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                         "n": len(values)}
    return out


def prompt_ids(n: int, vocab: int, avoid: tuple[int, ...] = (), seed: int = 0) -> np.ndarray:
    """n deterministic token ids in [0, vocab), none of them in `avoid` (special tokens).  [n] int64"""
    allowed = np.setdiff1d(np.arange(vocab, dtype=np.int64), np.asarray(avoid, np.int64))  # [vocab - |avoid|]
    if not len(allowed):
        raise ValueError(f"no ordinary token ids below {vocab} to build a prompt from")
    return np.random.default_rng(seed).choice(allowed, size=n)  # [n]


def special_ids(tokens) -> tuple[int, ...]:
    """A manifest TokenSpec's special ids: never in a bench prompt."""
    return (tokens.im_start_id, tokens.im_end_id, tokens.image_start_id, tokens.image_pad_id, tokens.image_end_id,
            tokens.eos_id, *tokens.stop_ids)


def bench_prompts(engine: Path, manifest, prompt_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """The decoder prompt [N] and the TTFT text ids [TTFT_TEXT_TOKENS] every system of a run gets: ids below
    the tokenizer's size (the decoder's vocab may be padded beyond it), none of its added (control) tokens."""
    vocab, avoid = ordinary_ids(engine, manifest)
    return prompt_ids(prompt_tokens, vocab, avoid), prompt_ids(TTFT_TEXT_TOKENS, vocab, avoid, seed=1)


def ordinary_ids(engine: Path, manifest) -> tuple[int, tuple[int, ...]]:
    """(the tokenizer's size, the ids a bench prompt avoids: special and added tokens) -> prompt_ids' arguments."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(engine / manifest.tokenizer))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    return vocab, special_ids(manifest.tokens) + tuple(tok.get_added_tokens_decoder())


def ttft_ids(tokens, image_tokens: int, text_ids: np.ndarray) -> np.ndarray:
    """The TTFT prompt: image_start, image_tokens x image_pad, image_end, then the text ids.  [n + 2 + T] int64"""
    return np.concatenate([[tokens.image_start_id], np.full(image_tokens, tokens.image_pad_id),
                           [tokens.image_end_id], text_ids]).astype(np.int64)


def bench_image(size: int = IMAGE_SIZE) -> np.ndarray:
    """A deterministic size x size BGR image with structure (gradients, bars, a disc).  [H, W, 3] uint8"""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size  # [H, W] each
    img = np.stack([255 * x, 255 * y, 255 * (1 - x) * ((np.floor(x * 8) + np.floor(y * 8)) % 2)], -1)  # [H, W, 3]
    disc = (x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.04
    img[disc] = (40, 200, 240)
    return np.ascontiguousarray(img.astype(np.uint8))


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def worker_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    ap = CliParser(prog=prog, description=doc)
    ap.add_argument("--engine", type=Path, required=True)
    ap.add_argument("--prompt-tokens", type=int, default=Workload.prompt_tokens)
    ap.add_argument("--new-tokens", type=int, default=Workload.new_tokens)
    ap.add_argument("--runs", type=int, default=Workload.runs)
    ap.add_argument("--threads", type=int, default=Workload.threads)
    ap.add_argument("--cache", type=Path, required=True, help="folder for converted peer models")
    ap.add_argument("--prepare", action="store_true", help="convert the weights into --cache, measure nothing")
    return ap


def workload_of(args: argparse.Namespace) -> Workload:
    return Workload(args.prompt_tokens, args.new_tokens, args.runs, args.threads)


def worker_args(engine: Path, work: Workload, cache: Path) -> list[str]:
    return ["--engine", str(engine), "--prompt-tokens", str(work.prompt_tokens), "--new-tokens", str(work.new_tokens),
            "--runs", str(work.runs), "--threads", str(work.threads), "--cache", str(cache)]


def worker_main(prog: str, doc: str, measure, prepare=None, skip=None, argv=None) -> int:
    """A worker's main(): parse the common flags; `skip(args)` may return a Report saying why this system
    cannot run here; --prepare calls `prepare(engine, cache)`; else emit `measure(engine, workload, cache)`."""
    from runtime.errors import FlashVLError

    args = worker_parser(prog, doc).parse_args(argv)
    try:
        skipped = skip(args) if skip else None
        if skipped is not None:
            return emit(skipped)
        if args.prepare:
            if prepare:
                prepare(args.engine, args.cache)
            return 0
        return emit(measure(args.engine, workload_of(args), args.cache))
    except (FlashVLError, ValueError, OSError) as e:
        print(error_line(e), file=sys.stderr)
        return 2


def emit(report: Report) -> int:
    """A worker's last act: the report as the last line of stdout."""
    return emit_line(report.to_json())


def emit_line(text: str) -> int:
    sys.stdout.write("\n" + text + "\n")
    sys.stdout.flush()
    return 0


def files_bytes(paths) -> int:
    return sum(Path(p).stat().st_size for p in paths)
