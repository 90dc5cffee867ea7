"""`python -m runtime.run --camera N | --video PATH | --url URL | --gst PIPELINE ...`: caption streams.

    python -m runtime.run --engine engines/tiny --video samples/clip.mp4
    python -m runtime.run --engine engines/tiny --camera 0 --interval 2 --min-change 0.03 --jsonl captions.jsonl
    python -m runtime.run --engine engines/tiny --video clip.mp4 --no-realtime --jsonl - --save captioned.mp4
    python -m runtime.run --engine engines/tiny --video name=door:door.mp4 --camera 0 --camera name=yard:1

Captions stream to stdout as they are decoded (one line each, `#id frame N: text`, or
`#id frame N (time): unchanged (change X)` for a scene the change gate skipped), or with
`--jsonl -` stdout carries only JSON Lines.  The backend line and a summary (captions/s,
capture-to-caption latency, frames dropped/corrupt, outages) go to stderr at the end.  Ctrl-C
stops within a second; every caption finished by then is written and the --save video is
closed properly.  Checks run before the model loads: every source opens, the output paths are
writable, --show has a display.

Several sources: the source flags repeat, in any mix, each source optionally named with a
`name=NAME:` prefix (runtime.video.names; default: the k-th --video is video{k-1}, and so on).
Each has its own capture thread and newest-frame slot, all are captioned through the one model
(runtime.video.streams).  Each caption is then printed whole when done, after its stream's name
(`door #3 frame 105: text`); ids count per stream; the summary has a line per stream and one for
all.  --loop and --no-realtime apply to every --video; --max-captions counts all streams' captions;
--save OUT.mp4 writes one video per stream, OUT.NAME.mp4; --show takes one source.  A file that ends
ends its stream, the others go on.
"""

from __future__ import annotations

import os
import sys
import time

from runtime.arguments import check_int
from runtime.cli_output import stdout_failure
from runtime.errors import FlashVLError
from runtime.stop_signals import deferred_stops, describe, exit_code
from runtime.video.names import check_unique, default_names, split_name


def sources_from_args(args) -> list[tuple[str, object]]:
    """args.sources [(flag, value)] in the order given -> [(stream name, VideoSource)]."""
    from runtime.video.frame import VideoSource

    given, sources, labels = [], [], []
    for flag, value in args.sources:
        name, target = split_name(f"--{flag}", value)
        if flag == "camera":
            try:
                target = int(target)
            except ValueError:
                raise FlashVLError(f"--camera {value}: expected a device index 0, 1, ... (/dev/video0 is 0), or "
                                   f"name=NAME:N, e.g. --camera name=yard:1") from None
            sources.append(VideoSource.camera(target))
        elif flag == "video":
            sources.append(VideoSource.file(target, loop=args.loop))
        elif flag == "url":
            sources.append(VideoSource.url(target))
        else:
            sources.append(VideoSource.gst(target))
        given.append(name)
        labels.append(f"--{flag} {value}")
    names = default_names([s.flag_name for s in sources], given)
    check_unique(names, labels)
    live = next((s for s in sources if s.live), None)
    if live is not None and all(s.live for s in sources):  # with a --video among them, both mean the files
        if args.loop:
            raise FlashVLError(f"--loop repeats a file given with --video; {live.describe()} never ends")
        if args.no_realtime:
            raise FlashVLError(f"--no-realtime reads a file as fast as the model goes; {live.describe()} is live")
    return list(zip(names, sources))


def save_paths(save: str, names: list[str]) -> list[str]:
    """--save OUT.mp4: that file for one stream, OUT.NAME.mp4 for each of several."""
    if len(names) == 1:
        return [save]
    stem, ext = os.path.splitext(save)
    return [f"{stem}.{name}{ext}" for name in names]


def check_outputs_are_not_inputs(args, sources, saves: list[str]) -> None:
    """--save and --jsonl must not name a --video being read, nor each other, nor lie in the engine folder:
    the run would destroy what is there."""
    inputs = [("--video", s.target) for _, s in sources if s.kind == "file"]
    outputs = [("--save", p) for p in saves] + ([("--jsonl", args.jsonl)] if args.jsonl and args.jsonl != "-" else [])
    for i, (flag_a, a) in enumerate(inputs + outputs):
        for flag_b, b in outputs[max(0, i + 1 - len(inputs)):]:
            same = os.path.abspath(a) == os.path.abspath(b)
            try:
                same = same or os.path.samefile(a, b)
            except OSError:  # one of them does not exist yet
                pass
            if same:
                raise FlashVLError(f"{flag_a} and {flag_b} name the same file ({b}): writing it would destroy "
                                   f"what is there; give {flag_b} another path")
    engine = os.path.realpath(args.engine)
    for flag, path in outputs:
        if os.path.commonpath([engine, os.path.realpath(path)]) == engine:
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
    """Captions on stdout: one source's as they are decoded, `#id frame N: text`, one line each.  With
    several sources (names=True, no pieces) each caption is written whole when done, after its stream's
    name, so that two streams' lines never mix."""

    def __init__(self, out, names: bool = False):
        self.out, self.names, self.open_id = out, names, None

    def piece(self, p) -> None:
        if self.open_id != p.id:
            self.end_line()
            self.out.write(f"#{p.id} frame {p.frame}: ")
            self.open_id = p.id
        self.out.write(p.text)
        self.out.flush()

    def event(self, ev) -> None:
        who = f"{ev.stream} " if self.names else ""
        if ev.repeat:
            self.end_line()
            self.out.write(f"{who}#{ev.id} frame {ev.frame} ({clock_text(ev.capture_ts, ev.media_s)}): unchanged "
                           f"(change {ev.change:.4f})\n")
        elif self.open_id != ev.id:  # no pieces came (an empty caption, or several streams)
            self.end_line()
            self.out.write(f"{who}#{ev.id} frame {ev.frame}: {ev.caption}\n")
        else:
            self.out.write("\n")
            self.open_id = None
        self.out.flush()

    def end_line(self) -> None:
        if self.open_id is not None:
            self.out.write("\n")
            self.open_id = None


def summary_line(st, seconds: float, label: str = "stream") -> str:
    s = st.source
    rate = "n/a" if st.captions_per_s is None else f"{st.captions_per_s:.3g}"
    lat = ("n/a" if st.latency_ms_p50 is None else
           f"p50 {st.latency_ms_p50:.0f} ms, p90 {st.latency_ms_p90:.0f} ms")
    outages = f", {s.outages} outages ({s.outage_s:.1f} s)" if s.outages else ""
    loops = f", {s.loops} loops" if s.loops else ""
    return (f"{label}: {st.captions} captions, {st.repeats} unchanged from {st.frames} frames in {seconds:.1f} s "
            f"({st.dropped} dropped, {s.corrupt} corrupt, {s.missing} missing{outages}{loops}); "
            f"{rate} captions/s; capture-to-caption latency {lat}")


def run_stream(args, sampling) -> int:
    """The stream mode of runtime.run's main(); raises FlashVLError for the caller to print."""
    from runtime.api import FlashVL
    from runtime.video.captioner import Cadence
    from runtime.video.frame import SourceError
    from runtime.video.model import CAPTION_MAX_NEW_TOKENS, FlashVLModel, PromptConfig
    from runtime.video.outputs import JsonlWriter, VideoSaver
    from runtime.video.sources import FrameReader
    from runtime.video.streams import named_error, open_streams

    sources = sources_from_args(args)
    names = [name for name, _ in sources]
    several = len(sources) > 1
    cadence = Cadence(args.interval, args.min_change, overlap={"auto": None, "on": True, "off": False}[args.overlap])
    prompt = PromptConfig(args.prompt, args.max_new_tokens or CAPTION_MAX_NEW_TOKENS, sampling, args.system,
                          iss=not args.no_iss)
    if args.max_captions is not None:
        check_int("--max-captions", args.max_captions, 1)
    if args.show and several:
        raise FlashVLError(f"--show draws one source in a window, got {len(sources)} ({', '.join(names)}); give "
                           f"one source, or --save OUT.mp4 (one video per stream)")
    if args.show:
        check_display()
    saves = save_paths(args.save, names) if args.save else []
    check_outputs_are_not_inputs(args, sources, saves)
    jsonl = JsonlWriter(args.jsonl) if args.jsonl else None
    readers, savers = [], []
    try:
        for name, source in sources:  # every source opens, or the run ends here, before the model loads
            readers.append(FrameReader(source, realtime=not (args.no_realtime and source.kind == "file")))
            try:
                readers[-1].open()
            except SourceError as e:
                raise (named_error(e, name) if several else e) from None
        for reader, path in zip(readers, saves):
            savers.append(VideoSaver(path, reader.stats.fps, lossless=not reader.realtime, queue_frames=16))
        vl = FlashVL.load(args.engine, threads=args.threads, max_seq_len=args.max_seq_len, backend=args.backend,
                          cuda_graphs=not args.no_cuda_graphs, spinning=False,  # see FlashVL.load
                          max_image_pixels=args.max_image_pixels,  # each frame is checked as it is prepared
                          max_batch=args.max_batch)
    except BaseException:
        try:
            _close_all(*readers, jsonl)
            for saver in savers:
                saver.discard()  # no "no frames" warning beside the one error line
        except Exception:
            pass  # the failure being raised is the one to report
        raise
    printer = None if args.jsonl == "-" else Printer(sys.stdout, names=several)
    latest = [None]  # the newest frame, for --show (one source)
    shown = {name: ["", 0] for name in names}  # per stream: the caption drawn on its frames and its id
    captions = 0

    def on_frame_of(name, saver):
        def on_frame(frame):  # capture thread, every frame
            if saver is not None:
                saver.offer(frame.image, shown[name][0], _header(shown[name][1], frame))
            latest[0] = frame
        return on_frame

    def handle(item) -> None:
        nonlocal captions
        if hasattr(item, "repeat"):
            shown[item.stream][:] = [item.caption, item.id]
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
        hooks = [on_frame_of(name, saver) for name, saver in zip(names, savers or [None] * len(names))]
        stream = open_streams([(name, FlashVLModel(vl, prompt), reader, hook)
                               for name, reader, hook in zip(names, readers, hooks)],
                              cadence, pieces=printer is not None and not several)
        while not stream.done and captions != args.max_captions:
            item = stream.get(0.03 if args.show else 0.2)
            if item is not None:
                handle(item)
            if args.show and latest[0] is not None and _show(latest[0], *shown[names[0]]):
                break  # q or Esc in the window
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP (runtime.stop_signals): the same orderly end
        interrupted = e
    except BrokenPipeError:  # `... --jsonl - | head`: the reader has gone, so end as if the source had
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        with deferred_stops():  # a second Ctrl-C or SIGTERM must not cut the flush short
            try:
                if stream is None:
                    _close_all(*readers)
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
                _close_all(*savers, jsonl, vl)
    print(vl.backend.line(), file=sys.stderr)
    if stream is not None:
        seconds = time.perf_counter() - t0
        for name, st in stream.stats().items():
            print(summary_line(st, seconds, f"stream {name}" if several else "stream"), file=sys.stderr)
        if several:
            print(summary_line(stream.total(), seconds, f"all {len(names)} streams"), file=sys.stderr)
        for saver in savers:
            print(f"saved {saver.path}: {saver.frames_written} frames"
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
