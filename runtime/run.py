"""`python -m runtime.run`: caption or answer about one image, or a camera or video stream.

    python -m runtime.run --engine engines/tiny --image samples/shapes.png
    python -m runtime.run --engine engines/tiny --image photo.jpg --prompt "What is here?" --json
    python -m runtime.run --engine engines/tiny --video samples/clip.mp4 --jsonl captions.jsonl
    python -m runtime.run --engine engines/tiny --camera 0 --interval 2 --min-change 0.03
    python -m runtime.run --engine engines/tiny --video name=door:door.mp4 --camera 0 --camera name=yard:1

Streams (--camera/--video/--url/--gst, each repeatable, in any mix, a source named with a name=NAME:
prefix) are described in runtime/video/cli.py.

Streams the text to stdout as it is decoded (timings go to stderr), or with --json
prints one JSON object: text, token_ids, image_tokens, prompt_tokens, finish_reason, timings, and
for dynamic-resolution engines the tiling (grid, tiles, ISS margin, image tokens vs plain cropping).
A user mistake prints one `error:` line to stderr and exits 2.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from functools import partial
from pathlib import Path

from runtime.arguments import check_int, check_text, check_threads
from runtime.cli_output import error_line, write_stdout
from runtime.cli_parser import CliParser
from runtime.errors import FlashVLError
from runtime.image_header import DEFAULT_MAX_PIXELS, MAX_PIXELS_CEILING  # not runtime.image: no OpenCV for --help
from runtime.manifest import MAX_BATCH
from runtime import stop_signals
from runtime.stop_signals import describe, exit_code, stopping_on_signals

DEFAULT_PROMPT = "Describe the image."
IMAGE_MAX_NEW_TOKENS = 128  # one image; a stream's captions default to runtime.video.model's 48


def parse_args(argv):
    ap = CliParser(prog="python -m runtime.run", description=__doc__)
    ap.add_argument("--engine", required=True, type=Path, help="engine folder written by `python -m export`")
    ap.add_argument("--image", help="image file (PNG, JPEG, BMP, TIFF, WebP), or - to read one from stdin; "
                                    "omit for text only")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"question or instruction (default: {DEFAULT_PROMPT!r})")
    ap.add_argument("--system", default=None, help="system prompt (default: the manifest's; '' for none)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help=f"default {IMAGE_MAX_NEW_TOKENS} for an image, "
                                                                      f"48 per caption for a stream")
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
    ap.add_argument("--max-batch", type=int, default=None, metavar="N",
                    help="sequences decoded together, e.g. the captions of several streams (default and upper "
                         "bound: what the engine was exported for, 8; 1 for folders exported before batching)")
    ap.add_argument("--max-seq-len", type=int, default=None,
                    help="context window to allocate the KV cache for (default and upper bound: the engine's)")
    ap.add_argument("--no-iss", action="store_true",
                    help="dynamic engines: plain dynamic cropping instead of the manifest's ISS margin")
    ap.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                    help=f"refuse images (and stream frames) of more than N pixels, width x height, before decoding "
                         f"them (default {DEFAULT_MAX_PIXELS:_}: any phone photo or 8K frame)")
    ap.add_argument("--no-exif-orientation", action="store_true",
                    help="keep an image file's pixels as stored instead of turning them upright as its EXIF "
                         "orientation says (as viewers do)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    st = ap.add_argument_group("camera and video streams (instead of --image)",
                               "Each source flag may be repeated, in any mix, to caption several streams at\n"
                               "once through the one model; name=NAME: before a source names its stream, e.g.\n"
                               "--video name=door:door.mp4 --camera name=yard:1 (default: camera0, video0, video1...)")
    for flag, metavar, text in (
            ("camera", "N", "V4L2 camera index (/dev/videoN)"),
            ("video", "PATH", "a video file (or a URL of a finite file)"),
            ("url", "URL", "a live stream: rtsp://..., http://... (reconnected when it drops)"),
            ("gst", "PIPELINE", "a GStreamer pipeline ending in appsink (Jetson CSI camera: see "
                                "docs/camera-streams.md); needs an OpenCV built with GStreamer")):
        # one list, args.sources = [(flag, value), ...], in the order given: default names count per flag
        st.add_argument(f"--{flag}", dest="sources", action="append", type=partial(_tagged, flag), metavar=metavar,
                        help=text)
    stream_options = []  # the stream options; each means nothing without a source

    def opt(*names, **kw):
        stream_options.append(st.add_argument(*names, **kw))

    opt("--loop", action="store_true", help="--video: start again at the end (every --video)")
    opt("--no-realtime", action="store_true",
        help="--video: offer every frame in order as fast as the model goes (nothing dropped; "
        "--interval counts media time) instead of playing it like a camera (every --video)")
    opt("--interval", type=float, default=0.0, metavar="S",
        help="caption at most every S seconds (default 0: as fast as the model allows)")
    opt("--min-change", type=float, default=None, metavar="X",
        help="skip frames that differ from the last captioned one by less than X (mean difference of "
        "32x32 colour thumbnails, 0..1; try 0.01) and re-report that caption's id instead")
    opt("--overlap", choices=("auto", "on", "off"), default="auto",
        help="prepare frame N+1 while decoding N: auto (default) = on for TensorRT, off for ONNX "
        "Runtime on the CPU, where both halves compete for the same cores")
    opt("--max-captions", type=int, default=None, metavar="N",
        help="stop after N captions, all streams together (default: until the sources end or Ctrl-C)")
    opt("--jsonl", metavar="FILE", help="append one JSON object per caption to FILE (a restarted run keeps the "
        "earlier lines), or - for stdout")
    opt("--save", metavar="OUT.mp4", help="write the video with the current caption drawn on it "
        "(.mp4, .avi or .mkv); with several sources one video per stream, OUT.NAME.mp4")
    opt("--show", action="store_true", help="show the captioned video in a window (needs a display "
        "and an OpenCV with a GUI; one source)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    # the stream options set away from their defaults, for the "needs a source" error
    args.stream_flags = [a.option_strings[0] for a in stream_options if getattr(args, a.dest) != a.default]
    return args


def _tagged(flag: str, value: str) -> tuple[str, str]:
    return flag, value


def quiet_opencv() -> None:
    """Nothing of OpenCV's or FFmpeg's own on stderr: their messages (FFmpeg's "moov atom not found" for a
    file that is no video, "Connection refused" for a camera that is off) would come before the one
    `error:` line that says the same thing with the fix.  -v keeps them."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # its ERRORs too: ours says it, with the fix
    # OpenCV reads it when its FFmpeg backend starts, at the first VideoCapture/VideoWriter; -8 = AV_LOG_QUIET
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:  # OpenCV's own warnings (a source it cannot open, ...) would stand beside our one error line
        quiet_opencv()
    with stopping_on_signals():  # SIGTERM/SIGHUP end a run as Ctrl-C does: a stream's output is finished
        return _run(args)


def _run(args) -> int:
    if sys.stdout is None:  # started with >&-
        print("error: stdout is closed; give the answer somewhere to go, e.g. > answer.txt", file=sys.stderr)
        return 2
    try:
        from runtime.api import FlashVL
        from runtime.image import read_stream
        from runtime.sampling import SamplingConfig

        if args.max_new_tokens is not None:
            check_int("--max-new-tokens", args.max_new_tokens, 1)
        check_threads(args.threads, "--threads")
        if args.max_batch is not None:
            check_int("--max-batch", args.max_batch, 1, MAX_BATCH, "sequences decoded together")
        check_int("--max-image-pixels", args.max_image_pixels, 1, MAX_PIXELS_CEILING,
                  "the ceiling is OpenCV's own decode limit")
        check_text("--prompt", args.prompt)
        check_text("--system", args.system, optional=True)
        sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                  repetition_penalty=args.repetition_penalty, seed=args.seed)
        streaming = bool(args.sources)
        if streaming and args.image is not None:
            raise FlashVLError("give either --image (one picture) or a stream (--camera/--video/--url/--gst), "
                               "not both")
        if streaming and args.json:
            raise FlashVLError("--json is for one image; a stream (--camera/--video/--url/--gst) writes JSON Lines "
                               "with --jsonl FILE|-")
        if not streaming and args.stream_flags:
            raise FlashVLError(f"{args.stream_flags[0]} applies to a stream; add --camera N, --video PATH, --url URL "
                               f"or --gst PIPELINE")
        if streaming:
            from runtime.video.cli import run_stream

            return run_stream(args, sampling)
        image = args.image
        if image == "-" and sys.stdin is None:  # started with <&-
            raise FlashVLError("--image -: stdin is closed; pipe an image file in, e.g. `< photo.jpg`")
        if image == "-":
            # encoded bytes, e.g. `cat photo.jpg | ... --image -`; read with a bound (`< /dev/zero` must not
            # take the device's memory)
            image = read_stream(sys.stdin.buffer, "--image -", args.max_image_pixels)
            if not image:
                raise FlashVLError("--image -: stdin is empty; pipe an image file in, e.g. `< photo.jpg`")
        vl = FlashVL.load(args.engine, threads=args.threads, max_seq_len=args.max_seq_len, backend=args.backend,
                          cuda_graphs=not args.no_cuda_graphs, max_image_pixels=args.max_image_pixels,
                          max_batch=args.max_batch,
                          exif_orientation=not args.no_exif_orientation)
        gen = vl.stream(image, args.prompt, max_new_tokens=args.max_new_tokens or IMAGE_MAX_NEW_TOKENS,
                        sampling=sampling, system=args.system, iss=not args.no_iss)
        if args.json:
            for _ in gen:
                pass
            write_stdout(json.dumps(gen.result.as_dict(), ensure_ascii=False) + "\n")
            print(vl.backend.line(), file=sys.stderr)
        else:
            for piece in gen:
                write_stdout(piece)
            write_stdout("\n")
            print(vl.backend.line(), file=sys.stderr)  # after the run: a user mistake stays one line
            print(_timing_line(gen.result), file=sys.stderr)
    except FlashVLError as e:
        print(error_line(e), file=sys.stderr)
        return 2
    except OSError as e:  # a file that cannot be read (permissions, I/O error); stdout's are write_stdout's
        if e.filename is None:
            print(f"error: {e.strerror or e}; check the files this run reads and writes, and their disk",
                  file=sys.stderr)
        else:
            print(f"error: {e.filename}: {e.strerror or e}; check that file's permissions and its disk",
                  file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP
        print(f"\n{describe(e)}", file=sys.stderr)
        return exit_code(e)
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
    stop_signals.exit(main())  # a run stopped by SIGTERM (or Ctrl-C, SIGHUP) ends by that signal
