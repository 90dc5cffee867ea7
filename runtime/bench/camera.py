"""`python -m runtime.bench.camera`: 1, 2, 4 ... video streams captioned at once through one FlashVL.

    python -m runtime.bench.camera --engine engines/flash-vl-2b-int4-ort [--engine DIR ...] \
        [--video samples/clip.mp4] [--streams 1,2,4] [--frames 4] [--new-tokens 48] [--threads 2] [--json FILE]

For each engine (loaded one at a time) and each stream count S: S streams, each `FlashVL.captions()` over
--frames frames of the video (evenly spaced; stream s starts s frames later, so the streams show different
pictures), `realtime=False` (every frame is captioned, none dropped) and Cadence(interval=0, overlap=False),
all started together on one FlashVL; a thread per stream reads its events.  One warm-up caption first.
    captions/s total       all captions / wall time from the start to the last caption
    captions/s per stream  a stream's captions / the time from the start to its last caption (min, max)
    caption latency        the time from the loop taking a frame to that frame's caption: with realtime=False a
                           stream's loop takes its next frame as soon as a caption is out, so it is the gap
                           between a stream's consecutive captions (the first from the start); p50/p90 over all.
                           (The events' own latency_ms counts from the frame's capture, which for a lossless
                           source includes the time it waited in the slot behind the caption before it.)
Peak RSS is the process's up to and including that stream count.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from runtime.bench.levels import parse_levels, percentile
from runtime.bench.report import gb, machine, num
from runtime.bench.workload import peak_rss_bytes
from runtime.cli_output import error_line
from runtime.cli_parser import CliParser
from runtime.errors import FlashVLError

PROMPT = "Describe the image."
DEFAULT_VIDEO = Path("samples/clip.mp4")


def read_frames(video: Path, count: int, streams: int) -> list[list[tuple[np.ndarray, float]]]:
    """Each stream's frames: `count` of the video's, evenly spaced, stream s offset by s frames.
    -> [stream][(BGR uint8 [H, W, 3], media seconds)]"""
    import cv2

    if not video.is_file():
        raise FlashVLError(f"--video {video}: no such file")
    cap = cv2.VideoCapture(str(video))
    total, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS) or 1.0
    step = (total - streams) // count
    wanted = {s + k * step for s in range(streams) for k in range(count)} if step > 0 else set()
    frames = {}
    for i in range(max(wanted, default=-1) + 1):  # decoded in order, only the wanted ones kept
        ok, img = cap.read()
        if not ok:
            break
        if i in wanted:
            frames[i] = img
    cap.release()
    if step < 1 or len(frames) < len(wanted):
        raise FlashVLError(f"--video {video}: {count} frames for each of {streams} streams need at least "
                           f"{count + streams} frames, it has {total} (of which {len(frames)} decoded); ask for "
                           f"fewer --frames or give a longer video")
    return [[(frames[s + k * step], (s + k * step) / fps) for k in range(count)] for s in range(streams)]


def caption_streams(vl, sources: list[list], new_tokens: int) -> dict:
    """All sources captioned at once -> {"wall_s", "streams": [{"events": [...]}]}; times from the start."""
    from runtime.video import Cadence, PromptConfig

    prompt = PromptConfig(PROMPT, max_new_tokens=new_tokens)
    cadence = Cadence(interval=0.0, overlap=False)
    out: list = [None] * len(sources)
    t0 = time.perf_counter()
    opened = [vl.captions(frames, prompt, cadence, realtime=False) for frames in sources]

    def read(i: int) -> None:
        try:
            events = []
            for ev in opened[i]:
                events.append({"t_s": time.perf_counter() - t0, "media_s": ev.media_s, "tokens": ev.tokens,
                               "caption": ev.caption, "vision_ms": ev.vision_ms, "prefill_ms": ev.prefill_ms,
                               "decode_ms": ev.decode_ms, "event_latency_ms": ev.latency_ms})
            out[i] = {"events": events}
        except BaseException as e:  # re-raised on the measuring thread
            out[i] = e

    threads = [threading.Thread(target=read, args=(i,), name=f"bench-stream-{i}") for i in range(len(sources))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = next((x for x in out if isinstance(x, BaseException)), None)
    if failed is not None:
        raise failed
    for stream in out:
        times = [0.0] + [e["t_s"] for e in stream["events"]]
        for e, before in zip(stream["events"], times):
            e["latency_ms"] = (e["t_s"] - before) * 1e3
    return {"wall_s": max((s["events"][-1]["t_s"] for s in out if s["events"]), default=0.0), "streams": out}


def row(engine: Path, model: str, streams: int, run: dict, rss: int) -> dict:
    counts = [len(s["events"]) for s in run["streams"]]
    per_stream = [len(s["events"]) / s["events"][-1]["t_s"] for s in run["streams"] if s["events"]]
    latencies = [e["latency_ms"] for s in run["streams"] for e in s["events"]]
    tokens = [e["tokens"] for s in run["streams"] for e in s["events"]]
    return {"engine": str(engine), "model": model, "streams": streams, "captions": sum(counts),
            "wall_s": run["wall_s"], "captions_per_s": sum(counts) / run["wall_s"] if run["wall_s"] else None,
            "per_stream_min": min(per_stream, default=None), "per_stream_max": max(per_stream, default=None),
            "latency_ms_p50": percentile(latencies, 50) if latencies else None,
            "latency_ms_p90": percentile(latencies, 90) if latencies else None,
            "tokens_per_caption": sum(tokens) / len(tokens) if tokens else None, "peak_rss_bytes": rss,
            "run": run}


def bench_engine(engine: Path, video: Path, levels: tuple[int, ...], frames: int, new_tokens: int,
                 threads: int | None) -> list[dict]:
    from runtime.api import FlashVL

    sources = read_frames(video, frames, max(levels))
    vl = FlashVL.load(engine, threads=threads, backend="onnxruntime")
    print(f"{engine}: {vl.backend.line()}", file=sys.stderr, flush=True)
    caption_streams(vl, [sources[0][:1]], new_tokens)  # warm-up
    rows = []
    for n in levels:
        rows.append(row(engine, vl.manifest.model, n, caption_streams(vl, sources[:n], new_tokens), peak_rss_bytes()))
        print(line(rows[-1]), file=sys.stderr, flush=True)
    vl.close()
    del vl
    gc.collect()
    return rows


HEADER = ("| engine | streams | captions | wall s | captions/s total | captions/s per stream (min–max) | "
          "caption latency p50 / p90 s | tokens/caption | peak RSS GB |\n|---|---|---|---|---|---|---|---|---|")


def line(r: dict) -> str:
    def f(x, scale=1.0):
        return "–" if x is None else num(x * scale)

    return (f"| {Path(r['engine']).name} | {r['streams']} | {r['captions']} | {f(r['wall_s'])} | "
            f"{f(r['captions_per_s'])} | {f(r['per_stream_min'])}–{f(r['per_stream_max'])} | "
            f"{f(r['latency_ms_p50'], 1e-3)} / {f(r['latency_ms_p90'], 1e-3)} | {f(r['tokens_per_caption'])} | "
            f"{gb(r['peak_rss_bytes'])} |")


def main(argv=None) -> int:
    ap = CliParser(prog="python -m runtime.bench.camera", description=__doc__)
    ap.add_argument("--engine", type=Path, action="append", required=True, help="engine folder (repeatable)")
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help=f"video file (default {DEFAULT_VIDEO})")
    ap.add_argument("--streams", default="1,2,4", help="stream counts, e.g. 1,2,4")
    ap.add_argument("--frames", type=int, default=4, help="frames captioned per stream")
    ap.add_argument("--new-tokens", type=int, default=48, help="tokens per caption at most")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, help="write every row, with each caption's times, here")
    args = ap.parse_args(argv)
    try:
        levels = parse_levels(args.streams, "--streams")
        if args.frames < 1 or args.new_tokens < 1:
            raise FlashVLError(f"--frames and --new-tokens must be at least 1, got {args.frames} and "
                               f"{args.new_tokens}")
        if args.json is not None and not args.json.resolve().parent.is_dir():
            raise FlashVLError(f"--json {args.json}: folder {args.json.parent} does not exist")
        t0 = time.perf_counter()
        rows = [r for engine in args.engine
                for r in bench_engine(engine, args.video, levels, args.frames, args.new_tokens, args.threads)]
    except (FlashVLError, ValueError) as e:
        print(error_line(e), file=sys.stderr)
        return 2
    m = machine()
    print(f"{args.frames} frames of {args.video} per stream, captions of at most {args.new_tokens} tokens, "
          f"realtime=False; {m['cpu']}, {m['cores']} cores\n")
    print(HEADER)
    for r in rows:
        print(line(r))
    print(f"\nbench: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"machine": m, "video": str(args.video), "frames": args.frames,
                                         "new_tokens": args.new_tokens, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
