"""`python -m runtime.bench.modes`: image tokens and vision/prefill/decode timings, per engine, image and mode.

    python -m runtime.bench.modes --engine engines/flash-vl-2b-random --engine engines/flash-vl-2b-dynamic-random \
        --image samples/shapes.png --image samples/street.jpg --image samples/document.png --new-tokens 16

Static engines run once per image; dynamic engines run with ISS (the manifest's margin) and with
plain dynamic cropping.  After one warm-up per engine, each cell is the median of --runs greedy
generations.  Prints a Markdown table; --json FILE writes every run.  Engines are loaded one at a
time, so two full-size models never share the memory.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
from pathlib import Path

from runtime.cli_output import error_line
from runtime.cli_parser import CliParser
from runtime.errors import FlashVLError

PROMPT = "Describe the image in detail."


def bench_engine(engine: Path, images: list[Path], new_tokens: int, runs: int, threads: int | None,
                 backend: str = "auto") -> list[dict]:
    from runtime.api import FlashVL

    vl = FlashVL.load(engine, threads=threads, backend=backend)
    print(vl.backend.line(), file=sys.stderr, flush=True)
    modes = [("static", True)] if vl.manifest.tiling is None else [("dynamic+ISS", True), ("dynamic", False)]
    vl.generate(images[0], PROMPT, max_new_tokens=2)  # warm-up: first-run allocations and page-ins
    rows = []
    for image in images:
        for mode, iss in modes:
            results = [vl.generate(image, PROMPT, max_new_tokens=new_tokens, iss=iss) for _ in range(runs)]
            t = [r.timings for r in results]
            tiling = results[0].tiling or {}
            tps = [x.decode_tokens_per_s for x in t if x.decode_tokens_per_s]
            rows.append({
                "engine": str(engine), "model": vl.manifest.model, "backend": vl.backend.name, "mode": mode,
                "image": image.name,
                "grid": "x".join(map(str, tiling.get("grid", [1, 1]))), "tiles": tiling.get("tiles", 1),
                "image_tokens": results[0].image_tokens, "prompt_tokens": results[0].prompt_tokens,
                "vision_ms": statistics.median(x.vision_ms for x in t),
                "prefill_ms": statistics.median(x.prefill_ms for x in t),
                "ttft_ms": statistics.median(x.ttft_ms for x in t),
                "decode_tokens_per_s": statistics.median(tps) if tps else None, "runs": runs})
            print(_line(rows[-1]), file=sys.stderr, flush=True)
    vl.close()
    del vl
    gc.collect()
    return rows


def _line(r: dict) -> str:
    tps = "n/a" if r["decode_tokens_per_s"] is None else f"{r['decode_tokens_per_s']:.2f}"
    return (f"| {r['model']} | {r['backend']} | {r['mode']} | {r['image']} | {r['grid']} | {r['tiles']} | "
            f"{r['image_tokens']} | "
            f"{r['vision_ms'] / 1e3:.2f} | {r['prefill_ms'] / 1e3:.2f} | {r['ttft_ms'] / 1e3:.2f} | {tps} |")


HEADER = ("| model | backend | mode | image | grid | tiles | image tokens | vision s | prefill s | TTFT s | "
          "decode tok/s |\n|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
    ap = CliParser(prog="python -m runtime.bench.modes", description=__doc__)
    ap.add_argument("--engine", type=Path, action="append", required=True, help="engine folder (repeatable)")
    ap.add_argument("--image", type=Path, action="append", required=True, help="image file (repeatable)")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "trt"))
    ap.add_argument("--json", type=Path, help="write every row as JSON here")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.new_tokens < 2:
        print("error: --runs must be at least 1 and --new-tokens at least 2", file=sys.stderr)
        return 2
    rows = []
    try:
        for engine in args.engine:
            rows += bench_engine(engine, args.image, args.new_tokens, args.runs, args.threads, args.backend)
    except FlashVLError as e:
        print(error_line(e), file=sys.stderr)
        return 2
    print(HEADER)
    for r in rows:
        print(_line(r))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
