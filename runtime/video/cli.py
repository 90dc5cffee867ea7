"""`python -m runtime.run --camera N | --video PATH | --url URL | --gst PIPELINE`: caption a stream.

    python -m runtime.run --engine engines/tiny --video samples/clip.mp4
    python -m runtime.run --engine engines/tiny --camera 0 --interval 2 --min-change 0.03 --jsonl captions.jsonl
    python -m runtime.run --engine engines/tiny --video clip.mp4 --no-realtime --jsonl - --save captioned.mp4

Captions stream to stdout as they are decoded (one line each, `#id frame N: text`, or
`#id frame N (time): unchanged (change X)` for a scene the change gate skipped), or with
`--jsonl -` stdout carries only JSON Lines.  The backend line and a summary (captions/s,
capture-to-caption latency, frames dropped/corrupt, outages) go to stderr at the end.  Ctrl-C
stops within a second; every caption finished by then is written and the --save video is
closed properly.  Checks run before the model loads: the source opens, the output paths are
writable, --show has a display.
"""

from __future__ import annotations

import os
import sys
import time

from runtime.arguments import check_int
from runtime.cli_output import stdout_failure
from runtime.errors import FlashVLError
from runtime.stop_signals import deferred_stops, describe, exit_code

def source_from_args(args):
    from runtime.video.frame import VideoSource

    if args.camera is not None:
        source = VideoSource.camera(args.camera)
    elif args.video is not None:
        source = VideoSource.file(args.video, loop=args.loop)
    elif args.url is not None:
        source = VideoSource.url(args.url)
    else:
        source = VideoSource.gst(args.gst)
    if args.loop and source.live:
        raise FlashVLError(f"--loop repeats a file given with --video; {source.describe()} never ends")
    if args.no_realtime and source.live:
        raise FlashVLError(f"--no-realtime reads a file as fast as the model goes; {source.describe()} is live")
    return source


def check_outputs_are_not_inputs(args) -> None:
    """--save and --jsonl must not name the --video being read, nor each other, nor lie in the engine folder:
    the run would destroy what is there."""
    named = [(flag, path) for flag, path in (("--video", args.video), ("--save", args.save), ("--jsonl", args.jsonl))
             if path and path != "-"]
    for i, (flag_a, a) in enumerate(named):
        for flag_b, b in named[i + 1:]:
            same = os.path.abspath(a) == os.path.abspath(b)
            try:
                same = same or os.path.samefile(a, b)
            except OSError:  # one of them does not exist yet
                pass
            if same:
                raise FlashVLError(f"{flag_a} and {flag_b} name the same file ({a}): writing it would destroy "
                                   f"what is there; give {flag_b} another path")
    engine = os.path.realpath(args.engine)
    for flag, path in named:
        if flag != "--video" and os.path.commonpath([engine, os.path.realpath(path)]) == engine:
            raise FlashVLError(f"{flag} {path} lies inside the engine folder {args.engine}, whose files are checked "
                               f"by hash; write it somewhere else")


def check_display() -> None:
    import cv2

    build = cv2.getBuildInformation()
    gui = build[build.find("GUI:"):].splitlines()[0] if "GUI:" in build else "GUI: unknown"
    if "NONE" in gui.upper():
        raise FlashVLError(f"--show: this OpenCV {cv2.__version__} has no GUI ({gui.strip()}; pip's "
                           f"opencv-python-headless never has one); pip install opencv-python in place of "
                           f"opencv-python-headless (JetPack's OpenCV has one), or use --save OUT.mp4")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise FlashVLError("--show: no display (DISPLAY and WAYLAND_DISPLAY are unset, e.g. over ssh); run it "
                           "on the device's desktop, ssh -X, or use --save OUT.mp4")


def clock_text(ts: float, media_s: float | None) -> str:
    """A frame's time for people: media time for files (mm:ss.mmm), local wall-clock time for live sources."""
    if media_s is not None:
        m, s = divmod(media_s, 60)
        return f"{int(m):02d}:{s:06.3f}"
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


class Printer:
    """Captions on stdout as they are decoded: `#id frame N: text`, one line each."""

    def __init__(self, out):
        self.out, self.open_id = out, None

    def piece(self, p) -> None:
        if self.open_id != p.id:
            self.end_line()
            self.out.write(f"#{p.id} frame {p.frame}: ")
            self.open_id = p.id
        self.out.write(p.text)
        self.out.flush()

    def event(self, ev) -> None:
        if ev.repeat:
            self.end_line()
            self.out.write(f"#{ev.id} frame {ev.frame} ({clock_text(ev.capture_ts, ev.media_s)}): unchanged "
                           f"(change {ev.change:.4f})\n")
        elif self.open_id != ev.id:  # no pieces came (an empty caption)
            self.end_line()
            self.out.write(f"#{ev.id} frame {ev.frame}: {ev.caption}\n")
        else:
            self.out.write("\n")
            self.open_id = None
        self.out.flush()

    def end_line(self) -> None:
        if self.open_id is not None:
            self.out.write("\n")
            self.open_id = None


def summary_line(st, seconds: float) -> str:
    s = st.source
    rate = "n/a" if st.captions_per_s is None else f"{st.captions_per_s:.3g}"
    lat = ("n/a" if st.latency_ms_p50 is None else
           f"p50 {st.latency_ms_p50:.0f} ms, p90 {st.latency_ms_p90:.0f} ms")
    outages = f", {s.outages} outages ({s.outage_s:.1f} s)" if s.outages else ""
    loops = f", {s.loops} loops" if s.loops else ""
    return (f"stream: {st.captions} captions, {st.repeats} unchanged from {st.frames} frames in {seconds:.1f} s "
            f"({st.dropped} dropped, {s.corrupt} corrupt, {s.missing} missing{outages}{loops}); "
            f"{rate} captions/s; capture-to-caption latency {lat}")


def run_stream(args, sampling) -> int:
    """The stream mode of runtime.run's main(); raises FlashVLError for the caller to print."""
    from runtime.api import FlashVL
    from runtime.video.captioner import Cadence
    from runtime.video.model import CAPTION_MAX_NEW_TOKENS, PromptConfig
    from runtime.video.outputs import JsonlWriter, VideoSaver
    from runtime.video.sources import FrameReader

    source = source_from_args(args)
    cadence = Cadence(args.interval, args.min_change, overlap={"auto": None, "on": True, "off": False}[args.overlap])
    prompt = PromptConfig(args.prompt, args.max_new_tokens or CAPTION_MAX_NEW_TOKENS, sampling, args.system,
                          iss=not args.no_iss)
    if args.max_captions is not None:
        check_int("--max-captions", args.max_captions, 1)
    if args.show:
        check_display()
    check_outputs_are_not_inputs(args)
    realtime = not args.no_realtime
    jsonl = JsonlWriter(args.jsonl) if args.jsonl else None
    reader = saver = None
    try:
        reader = FrameReader(source, realtime=realtime)
        reader.open()
        if args.save:
            saver = VideoSaver(args.save, reader.stats.fps, lossless=not realtime, queue_frames=16)
        vl = FlashVL.load(args.engine, threads=args.threads, max_seq_len=args.max_seq_len, backend=args.backend,
                          cuda_graphs=not args.no_cuda_graphs, spinning=False,  # see FlashVL.load
                          max_image_pixels=args.max_image_pixels)  # each frame is checked as it is prepared
    except BaseException:
        try:
            _close_all(saver, reader, jsonl)
        except Exception:
            pass  # the failure being raised is the one to report
        raise
    printer = None if args.jsonl == "-" else Printer(sys.stdout)
    latest = [None]  # the newest frame, for --show
    shown = ["", 0]  # the caption drawn on frames and its id; set here as each event is read
    captions = 0

    def on_frame(frame):  # capture thread, every frame
        if saver is not None:
            saver.offer(frame.image, shown[0], _header(shown[1], frame))
        latest[0] = frame

    def handle(item) -> None:
        nonlocal captions
        if hasattr(item, "repeat"):
            shown[:] = [item.caption, item.id]
            captions += not item.repeat
            if jsonl is not None:
                try:
                    jsonl.write(item.as_json())
                except OSError as e:
                    if args.jsonl == "-":
                        raise stdout_failure(e, "the captions") from None
                    raise FlashVLError(f"--jsonl {args.jsonl}: cannot write ({e.strerror or e}); free some space "
                                       f"or write somewhere else") from None
        if printer is None:
            return
        try:
            if hasattr(item, "repeat"):
                printer.event(item)
            else:
                printer.piece(item)
        except OSError as e:  # stdout, not the engine: `> /dev/full`, or `| head` (BrokenPipeError: the end)
            raise stdout_failure(e, "the captions") from None

    t0 = time.perf_counter()
    interrupted = None  # the KeyboardInterrupt (Ctrl-C) or Stopped (SIGTERM, SIGHUP) that ended the loop
    stream = None
    try:
        stream = vl.captions(reader, prompt, cadence, realtime=realtime, pieces=printer is not None,
                             on_frame=on_frame)
        while not stream.done and captions != args.max_captions:
            item = stream.get(0.03 if args.show else 0.2)
            if item is not None:
                handle(item)
            if args.show and latest[0] is not None and _show(latest[0], *shown):
                break  # q or Esc in the window
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP (runtime.stop_signals): the same orderly end
        interrupted = e
    except BrokenPipeError:  # `... --jsonl - | head`: the reader has gone, so end as if the source had
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        with deferred_stops():  # a second Ctrl-C or SIGTERM must not cut the flush short
            try:
                if stream is None:
                    reader.close()
                else:
                    stream.stop()
                    while captions != args.max_captions and (item := _next_quietly(stream)) is not None:
                        handle(item)  # what the loop finished before it stopped
                if printer is not None:
                    try:
                        printer.end_line()
                    except OSError as e:
                        raise stdout_failure(e, "the captions") from None
            except BrokenPipeError:  # Ctrl-C reached `| jq` too: the reader is gone, the files are still closed
                pass
            finally:
                _close_all(saver, jsonl, vl)
    print(vl.backend.line(), file=sys.stderr)
    if stream is not None:
        print(summary_line(stream.stats(), time.perf_counter() - t0), file=sys.stderr)
        if saver is not None:
            print(f"saved {args.save}: {saver.frames_written} frames"
                  + (f" ({saver.dropped} left out: the writer fell behind)" if saver.dropped else ""), file=sys.stderr)
    if interrupted is not None:
        print(describe(interrupted), file=sys.stderr)
        return exit_code(interrupted)
    return 0


def _next_quietly(stream):
    """An event left in a stopped stream, or None; an error it ends with was (or will be) raised already."""
    try:
        return stream.get(0)
    except Exception:
        return None


def _close_all(*things) -> None:
    """Close each (None skipped) even if one fails; then raise the first failure."""
    first = None
    for thing in things:
        if thing is None:
            continue
        try:
            thing.close()
        except Exception as e:
            first = first or e
    if first is not None:
        raise first


def _header(cid: int, frame) -> str:
    return f"#{cid}  {clock_text(frame.wall_ts, frame.media_s)}" if cid else clock_text(frame.wall_ts, frame.media_s)


def _show(frame, caption: str, cid: int) -> bool:
    import cv2

    from runtime.video.overlay import draw_caption

    cv2.imshow("Flash-VL", draw_caption(frame.image, caption, _header(cid, frame)))
    return cv2.waitKey(1) & 0xFF in (ord("q"), 27)
