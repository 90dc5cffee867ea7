"""`python -m runtime.run`: caption or answer about one image with an engine folder.

    python -m runtime.run --engine engines/tiny --image samples/shapes.png
    python -m runtime.run --engine engines/tiny --image photo.jpg --prompt "What is here?" --json

Streams the text to stdout as it is decoded (timings go to stderr), or with --json
prints one JSON object: text, token_ids, image_tokens, prompt_tokens, finish_reason, timings, and
for dynamic-resolution engines the tiling (grid, tiles, ISS margin, image tokens vs plain cropping).
A user mistake prints one `error:` line to stderr and exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from runtime.errors import FlashVLError

DEFAULT_PROMPT = "Describe the image."


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m runtime.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", required=True, type=Path, help="engine folder written by `python -m export`")
    ap.add_argument("--image", help="image file (PNG, JPEG, BMP, TIFF, WebP), or - to read one from stdin; "
                                    "omit for text only")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"question or instruction (default: {DEFAULT_PROMPT!r})")
    ap.add_argument("--system", default=None, help="system prompt (default: the manifest's; '' for none)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ap.add_argument("--top-k", type=int, default=0, help="0 = off")
    ap.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    ap.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    ap.add_argument("--seed", type=int, default=None, help="sampling seed (reproducible runs)")
    ap.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "trt"),
                    help="auto (default): TensorRT when the folder has plans built for this GPU, else ONNX Runtime "
                         "on the CPU; the choice and its reason are printed once")
    ap.add_argument("--no-cuda-graphs", action="store_true",
                    help="TensorRT: run every decode step with a plain enqueue instead of replaying CUDA graphs")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    ap.add_argument("--max-seq-len", type=int, default=None,
                    help="context window to allocate the KV cache for (default and upper bound: the engine's)")
    ap.add_argument("--no-iss", action="store_true",
                    help="dynamic engines: plain dynamic cropping instead of the manifest's ISS margin")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        from runtime.api import FlashVL
        from runtime.sampling import SamplingConfig

        if args.max_new_tokens < 1:
            raise FlashVLError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
        if args.threads is not None and args.threads < 1:
            raise FlashVLError(f"--threads must be at least 1, got {args.threads}")
        sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                  repetition_penalty=args.repetition_penalty, seed=args.seed)
        image = args.image
        if image == "-":
            image = sys.stdin.buffer.read()  # encoded bytes, e.g. `cat photo.jpg | ... --image -`
            if not image:
                raise FlashVLError("--image -: stdin is empty; pipe an image file in, e.g. `< photo.jpg`")
        vl = FlashVL.load(args.engine, threads=args.threads, max_seq_len=args.max_seq_len, backend=args.backend,
                          cuda_graphs=not args.no_cuda_graphs)
        gen = vl.stream(image, args.prompt, max_new_tokens=args.max_new_tokens, sampling=sampling,
                        system=args.system, iss=not args.no_iss)
        if args.json:
            for _ in gen:
                pass
            print(json.dumps(gen.result.as_dict(), ensure_ascii=False))
            print(vl.backend.line(), file=sys.stderr)
        else:
            for piece in gen:
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            print(vl.backend.line(), file=sys.stderr)  # after the run: a user mistake stays one line
            print(_timing_line(gen.result), file=sys.stderr)
    except FlashVLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an engine file that cannot be read (permissions, I/O error)
        print(f"error: {e.filename or args.engine}: {e.strerror or e}; check the engine folder's files and "
              f"permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


def _timing_line(r) -> str:
    t = r.timings
    tps = "n/a" if t.decode_tokens_per_s is None else f"{t.decode_tokens_per_s:.1f} tok/s"
    tiles = "" if not r.tiling else (f"{r.tiling['grid'][0]}x{r.tiling['grid'][1]} grid, {r.tiling['tiles']} tiles, "
                                     f"{r.image_tokens} image tokens (plain cropping: "
                                     f"{r.tiling['plain_dynamic_tokens']}), ")
    return (f"[{len(r.token_ids)} tokens, {r.finish_reason}] {tiles}image {t.preprocess_ms:.0f}+{t.vision_ms:.0f} ms, "
            f"prefill {r.prompt_tokens} tokens {t.prefill_ms:.0f} ms, TTFT {t.ttft_ms:.0f} ms, decode {tps}")


if __name__ == "__main__":
    sys.exit(main())
