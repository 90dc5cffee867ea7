"""`python -m runtime.bench.chunking`: what prefill chunking and shared vision calls buy, measured.

    python -m runtime.bench.chunking --engine DIR [--chunks 0,32,64,128,256] [--prompt-tokens 290]
        [--decode-tokens 48] [--images 4] [--threads 2] [--json FILE]

1. Prefill vs decode.  Sequence A decodes (text only); when it has 8 tokens, sequence B arrives with an image
   prompt of --prompt-tokens rows (the image encoded ahead, so only the prefill competes).  For each
   --chunks size (0 = the whole prompt in one call), on one FlashVL: A's longest gap between two tokens
   while B prefills (the stall B's prompt causes), A's median gap, and B's prefill time and TTFT.
2. Vision.  --images images encoded one call each, then all in one call: ms per image.
Prints one table per part; --json writes every figure.  Run it on the CPU and engine you deploy.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np

from runtime.bench.report import machine
from runtime.bench.workload import bench_image
from runtime.cli_output import error_line
from runtime.cli_parser import CliParser
from runtime.errors import FlashVLError

WARMUP_TOKENS = 8  # A's tokens before B arrives
WAIT_S = 600  # bound on every wait of a round
A_PROMPT = "Count from one to one hundred, one number per line."


def _image_prompt_words(vl, image_tokens: int, prompt_tokens: int) -> str:
    """A question that makes the chat prompt about prompt_tokens long with the image."""
    words, text = [], ""
    while len(vl.tokenizer.encode_prompt(text, image_tokens)) < prompt_tokens:
        words.append("describe")
        text = " ".join(words)
    return text


def prefill_round(vl, chunk: int, encoded, question: str, decode_tokens: int) -> dict:
    """A decodes; once it has WARMUP_TOKENS tokens, B's image prompt arrives.  A's longest gap between two
    tokens is the stall B's prefill caused (A's other gaps are one decode step each)."""
    vl.engine.scheduler.prefill_chunk = chunk
    out = {}
    a = threading.Thread(target=lambda: out.update(a=vl.generate(None, A_PROMPT, max_new_tokens=decode_tokens)))
    a.start()
    deadline = time.monotonic() + WAIT_S
    while a.is_alive() and time.monotonic() < deadline and not any(
            s.n_generated >= WARMUP_TOKENS for s in list(vl.engine.scheduler.running)):
        time.sleep(0.002)
    b = vl.generate(encoded, question, max_new_tokens=1)
    a.join(WAIT_S)
    ra = out["a"]
    ta, tb = ra.timings, b.timings
    return {"chunk": chunk, "a_tokens": len(ra.token_ids), "a_finished_before_b": ta.decode_steps < WARMUP_TOKENS,
            "a_mean_gap_ms": ta.decode_ms / max(ta.decode_steps, 1), "a_max_gap_ms": ta.max_token_gap_ms,
            "b_prefill_ms": tb.prefill_ms, "b_ttft_ms": tb.ttft_ms, "b_prompt_tokens": b.prompt_tokens}


def vision_round(vl, images: int) -> dict:
    prepared = [vl.prepare_image(bench_image(512 + 8 * i)) for i in range(images)]
    pixels = [p.pixels for p in prepared]
    vl.vision.encode(pixels[0])  # warm-up
    t0 = time.perf_counter()
    for p in pixels:
        vl.vision.encode(p)
    one_by_one = (time.perf_counter() - t0) * 1e3 / images
    t0 = time.perf_counter()
    vl.vision.encode(np.concatenate(pixels))
    together = (time.perf_counter() - t0) * 1e3 / images
    return {"images": images, "ms_per_image_one_call_each": one_by_one, "ms_per_image_one_call": together}


def main(argv=None) -> int:
    ap = CliParser(prog="python -m runtime.bench.chunking", description=__doc__)
    ap.add_argument("--engine", required=True)
    ap.add_argument("--chunks", default="0,32,64,128,256")
    ap.add_argument("--prompt-tokens", type=int, default=290)
    ap.add_argument("--decode-tokens", type=int, default=160, help="A's tokens: enough to outlast B's prefill")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from runtime.api import FlashVL

    try:
        chunks = [int(c) for c in args.chunks.split(",")]
        vl = FlashVL.load(args.engine, threads=args.threads, backend="onnxruntime")
        encoded = vl.encode_prepared(vl.prepare_image(bench_image(512)))
        question = _image_prompt_words(vl, encoded.embeds.shape[1], args.prompt_tokens)
        prefill_round(vl, 0, encoded, question, 2 * WARMUP_TOKENS)  # warm-up
        rows = [prefill_round(vl, c, encoded, question, args.decode_tokens) for c in chunks]
        vision = vision_round(vl, args.images)
    except (FlashVLError, ValueError) as e:
        print(error_line(e), file=sys.stderr)
        return 2
    m = machine()
    print(f"{args.engine}: {m['cpu']}, {m['cores']} cores, {args.threads} threads; B's prompt "
          f"{rows[0]['b_prompt_tokens']} tokens")
    print("| prefill chunk | A's mean gap between tokens (ms) | A's longest gap (ms) | B prefill ms | B TTFT ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        late = " (A ended first)" if r["a_finished_before_b"] else ""
        print(f"| {r['chunk'] or 'whole'}{late} | {r['a_mean_gap_ms']:.0f} | {r['a_max_gap_ms']:.0f} | "
              f"{r['b_prefill_ms']:.0f} | {r['b_ttft_ms']:.0f} |")
    print(f"vision: {vision['images']} images, {vision['ms_per_image_one_call_each']:.0f} ms/image one call each, "
          f"{vision['ms_per_image_one_call']:.0f} ms/image in one call")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": m, "engine": args.engine, "prefill": rows, "vision": vision}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
