"""Several sources captioned at once through one model (runtime.video.streams, runtime.video.names, the CLI's
repeated source flags): the merged events and their names, a source that ends or fails among others, stop,
a fair share; with fakes for the loop's behaviour, and the tiny engine (one FlashVL, its scheduler batching
the streams) for parity with serial generate() on videos the tests write."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque

import cv2
import pytest

from runtime.errors import Cancelled, FlashVLError
from runtime.video import Cadence, CaptionEvent, FrameFeed, PromptConfig, VideoSource
from runtime.video.names import check_unique, default_names, split_name
from runtime.video.sources import FrameReader
from runtime.video.streams import named_sources, open_streams
from tests.conftest import ROOT, assert_one_line_error, run_cli
from tests.video_fakes import FakeModel, gray_frames
from tests.video_files import write_video

WAIT_S = 30  # the bound on every wait for a thread of the loop


def events_of(stream) -> list[CaptionEvent]:
    with stream:
        return [e for e in stream if isinstance(e, CaptionEvent)]


def by_stream(events) -> dict[str, list[CaptionEvent]]:
    out: dict[str, list[CaptionEvent]] = {}
    for e in events:
        out.setdefault(e.stream, []).append(e)
    return out


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT_S} s for {what}"
        time.sleep(0.01)


# ----------------------------------------------------------------------------- names


def test_a_name_prefix_is_split_from_the_source():
    assert split_name("--video", "name=door:/path/a.mp4") == ("door", "/path/a.mp4")
    assert split_name("--url", "name=gate:rtsp://host:554/s") == ("gate", "rtsp://host:554/s")  # the first ':' ends it
    assert split_name("--video", "/path/name=x:y.mp4") == (None, "/path/name=x:y.mp4")  # only a prefix names
    assert split_name("--camera", "1") == (None, "1")


@pytest.mark.parametrize("value", ["name=door", "name=:a.mp4", "name=door:", "name=bad/name:a.mp4",
                                   "name=-x:a.mp4", "name=" + "x" * 33 + ":a.mp4"])
def test_a_bad_name_prefix_is_refused(value):
    with pytest.raises(FlashVLError, match=r"--video .*expected name=NAME:SOURCE .* ./name=\.\.\."):
        split_name("--video", value)


def test_default_names_count_per_kind_and_duplicates_are_refused():
    assert default_names(["video", "camera", "video", "camera"], [None, None, "yard", None]) == \
        ["video0", "camera0", "yard", "camera1"]
    with pytest.raises(FlashVLError, match=r"stream name 'video1' is given to two sources \(--video name=video1:a "
                                           r"and --video b\)"):
        check_unique(["video1", "video1"], ["--video name=video1:a", "--video b"])


def test_named_sources_takes_a_dict_or_a_list_of_sources():
    a, b, feed = VideoSource.file("a.mp4"), VideoSource.camera(2), FrameFeed()
    assert named_sources({"door": a, "yard": b}) == [("door", a), ("yard", b)]
    assert named_sources([a, b, feed, a]) == [("video0", a), ("camera0", b), ("feed0", feed), ("video1", a)]
    frames = gray_frames([1, 2])
    assert named_sources(a) is None and named_sources(frames) is None and named_sources([]) is None
    assert named_sources([(frames[0], 0.0)]) is None  # (array, seconds) pairs are frames
    with pytest.raises(FlashVLError, match="a list of several sources holds VideoSources and FrameFeeds, got a "
                                           "ndarray"):
        named_sources([a, frames[0]])
    with pytest.raises(FlashVLError, match="the dict of sources is empty"):
        named_sources({})
    with pytest.raises(FlashVLError, match="a stream name is 1-32 letters"):
        named_sources({"front door": a})


# ----------------------------------------------------------------------------- the merged loop, with fakes


def test_two_sources_merge_into_one_iterator_with_each_event_named():
    stream = open_streams([("a", FakeModel(), gray_frames(range(0, 60, 10)), None),
                           ("b", FakeModel(), gray_frames(range(100, 140, 10)), None)], Cadence(), realtime=False)
    events = by_stream(events_of(stream))
    assert list(stream.streams) == ["a", "b"] and set(events) == {"a", "b"}
    assert [e.caption.strip() for e in events["a"]] == [f"gray {v}" for v in range(0, 60, 10)]
    assert [e.caption.strip() for e in events["b"]] == [f"gray {v}" for v in range(100, 140, 10)]
    for evs in events.values():  # ids and frames count per stream
        assert [e.id for e in evs] == list(range(1, len(evs) + 1)) == [e.frame + 1 for e in evs]
    assert events["a"][0].as_json()["stream"] == "a"
    stats, total = stream.stats(), stream.total()
    assert (stats["a"].captions, stats["b"].captions, total.captions, total.frames) == (6, 4, 10, 10)
    assert total.source.frames == 10 and total.latency_ms_p50 is not None


def test_pieces_and_frames_carry_the_stream_name():
    seen = []
    stream = open_streams([(n, FakeModel(), gray_frames([7]), seen.append) for n in ("x", "y")], Cadence(),
                          realtime=False, pieces=True)
    with stream:
        items = list(stream)
    assert {(type(i).__name__, i.stream) for i in items} == {(k, n) for k in ("CaptionPiece", "CaptionEvent")
                                                             for n in ("x", "y")}
    assert sorted(f.stream for f in seen) == ["x", "y"]  # on_frame sees whose frame it is


def test_a_source_that_ends_ends_its_stream_and_the_others_go_on():
    feed = FrameFeed(lossless=True)
    stream = open_streams([("short", FakeModel(), gray_frames([1, 2, 3]), None), ("long", FakeModel(), feed, None)],
                          Cadence(), realtime=False)
    got = []
    with stream:
        for v in (10, 11):
            feed.push(gray_frames([v])[0])
        wait_until(lambda: stream.streams["short"].ended, "the short stream to end")
        for v in (12, 13, 14):  # after the short stream has ended
            feed.push(gray_frames([v])[0])
        feed.close()
        got = list(stream)
    events = by_stream(got)
    assert [e.caption.strip() for e in events["short"]] == ["gray 1", "gray 2", "gray 3"]
    assert [e.caption.strip() for e in events["long"]] == [f"gray {v}" for v in range(10, 15)]
    assert stream.streams["short"].error is None and stream.done


def test_an_error_in_one_stream_stops_them_all_and_is_raised_with_its_name():
    frames = gray_frames([10, 20]) + [gray_frames([0])[0].astype("float32")]
    idle = FrameFeed(lossless=True)  # never ends by itself: only the error can end it
    stream = open_streams([("cam", FakeModel(), idle, None), ("bad", FakeModel(), frames, None)], Cadence(),
                          realtime=False)
    got = []
    with pytest.raises(FlashVLError, match=r"^stream bad: frame 2: expected uint8 pixels, got float32"):
        for e in stream:
            got.append(e.caption.strip())
    assert got == ["gray 10", "gray 20"]
    assert all(s.ended for s in stream.streams.values()) and stream.streams["cam"].stop_event.is_set()


def test_stop_ends_every_stream_and_each_cancels_its_own_call():
    models = [FakeModel(describe_s=30), FakeModel(describe_s=30)]
    stream = open_streams([(n, m, gray_frames([1, 2]), None) for n, m in zip("ab", models)], Cadence(),
                          realtime=False)
    wait_until(lambda: all("describe" in m.started for m in models), "both captions to start")
    stream.stop()
    assert list(stream) == [] and stream.done
    assert [m.resumed for m in models] == [1, 1]
    assert not any(t.name.startswith(("flashvl-model", "flashvl-prepare")) for t in threading.enumerate())


def test_a_bad_source_among_good_ones_is_refused_before_any_thread_starts(tmp_path):
    clip = write_video(tmp_path / "clip.avi", "MJPG", (64, 48), 10, 3)
    good = FrameReader(VideoSource.file(clip), realtime=False)
    good.open()
    model = FakeModel()
    with pytest.raises(FlashVLError, match=r"^stream gone: --video .*missing\.avi: no such file"):
        open_streams([("good", model, good, None), ("gone", FakeModel(), VideoSource.file(tmp_path / "missing.avi"),
                                                    None)], Cadence(), realtime=False)
    assert good._cap is None and model.started == []  # released, and nothing was captioned


class FifoDevice:
    """One model that several streams share, as the engine is: a describe at a time, in the order asked."""

    def __init__(self, describe_s: float):
        self.describe_s, self.served = describe_s, []
        self._waiting: deque = deque()
        self._cv = threading.Condition()

    def run(self, who: str, cancelled: threading.Event) -> None:
        ticket = object()
        deadline = time.monotonic() + WAIT_S
        with self._cv:
            self._waiting.append(ticket)
            while self._waiting[0] is not ticket:
                if cancelled.is_set() or time.monotonic() > deadline:
                    self._waiting.remove(ticket)
                    self._cv.notify_all()
                    raise Cancelled(who)
                self._cv.wait(0.05)
        time.sleep(self.describe_s)
        with self._cv:
            self._waiting.popleft()
            self.served.append(who)
            self._cv.notify_all()


class SharedClient(FakeModel):
    """A stream's handle on the FifoDevice (a FlashVLModel's on the FlashVL)."""

    def __init__(self, device: FifoDevice, name: str):
        super().__init__()
        self.device, self.name = device, name

    def _sleep(self, seconds, what):
        if what == "describe":
            self.device.run(self.name, self.cancelled)
        super()._sleep(0, what)


def test_two_identical_streams_share_a_first_come_first_served_model_fairly():
    device = FifoDevice(describe_s=0.005)
    endless = [itertools.cycle(gray_frames([50])) for _ in range(2)]
    stream = open_streams([(n, SharedClient(device, n), frames, None) for n, frames in zip("ab", endless)],
                          Cadence(), realtime=False)
    counts = Counter()
    with stream:
        for e in stream:
            counts[e.stream] += 1
            if sum(counts.values()) == 40:
                break
    assert max(counts.values()) <= 2 * min(counts.values()), counts


# ----------------------------------------------------------------------------- the tiny engine, several streams


def videos(tmp_path, n: int) -> list:
    """n different clips: their own sizes, lengths and pictures (frame i of each says i in its bars)."""
    sizes, lengths = [(64, 48), (96, 64), (80, 80)], [5, 7, 4]
    return [write_video(tmp_path / f"clip{k}.avi", "MJPG", sizes[k], 10, lengths[k]) for k in range(n)]


def decoded(path) -> list:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames = []
    for _ in range(1000):
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


PROMPT = PromptConfig("Describe the image.", max_new_tokens=8)


@pytest.mark.parametrize("n", [2, 3])
def test_every_caption_of_each_stream_is_what_its_frame_gets_alone(tiny_engine, tmp_path, n):
    from runtime import FlashVL

    clips = videos(tmp_path, n)
    vl = FlashVL.load(tiny_engine)
    names = ["door", "yard", "gate"][:n]
    events = by_stream(events_of(vl.captions({name: VideoSource.file(c) for name, c in zip(names, clips)}, PROMPT,
                                             realtime=False)))
    assert set(events) == set(names)
    for name, clip in zip(names, clips):
        frames = decoded(clip)
        want = [vl.generate(f, PROMPT.prompt, max_new_tokens=PROMPT.max_new_tokens) for f in frames]  # serial
        assert [e.frame for e in events[name]] == list(range(len(frames)))
        assert [e.caption for e in events[name]] == [w.text for w in want], name
        assert [e.tokens for e in events[name]] == [len(w.token_ids) for w in want]
    vl.close()


def test_a_list_of_sources_and_two_captions_calls_at_once(tiny_engine, tmp_path):
    """Sources given as a list get default names.  Two captions() on one FlashVL at once: stopping one (an
    endless loop) while the other's next caption is in flight leaves that caption, and the rest, whole."""
    from runtime import FlashVL

    a, b = videos(tmp_path, 2)
    vl = FlashVL.load(tiny_engine)
    both = events_of(vl.captions([VideoSource.file(a), VideoSource.file(b)], PROMPT, realtime=False))
    assert Counter(e.stream for e in both) == {"video0": 5, "video1": 7}

    endless = vl.captions(VideoSource.file(a, loop=True), PROMPT, realtime=False)
    got = []
    with vl.captions(VideoSource.file(b), PROMPT, realtime=False) as finite:
        for e in finite:
            got.append(e)
            if len(got) == 2:  # its model thread has begun the third caption
                endless.stop()
    want = [vl.generate(f, PROMPT.prompt, max_new_tokens=PROMPT.max_new_tokens).text for f in decoded(b)]
    assert [e.caption for e in got] == want
    vl.close()


def test_two_identical_streams_get_a_fair_share_of_one_flashvl(tiny_engine, tmp_path):
    from runtime import FlashVL

    clip = write_video(tmp_path / "clip.avi", "MJPG", (64, 48), 10, 5)
    vl = FlashVL.load(tiny_engine)
    counts = Counter()
    with vl.captions({n: VideoSource.file(clip, loop=True) for n in ("a", "b")}, PROMPT, realtime=False) as events:
        for e in events:
            counts[e.stream] += 1
            if sum(counts.values()) == 24:
                break
    vl.close()
    assert max(counts.values()) <= 2 * min(counts.values()), counts


# ----------------------------------------------------------------------------- the CLI


def stream_cli(engine, *args) -> list[str]:
    return ["-m", "runtime.run", "--engine", str(engine), *map(str, args)]


def test_cli_captions_several_files_with_names_a_summary_each_and_a_video_each(tiny_engine, tmp_path):
    """A short file ends its stream while the long one goes on; every row names its stream; the captions are
    what each frame gets alone."""
    from runtime import FlashVL

    short = write_video(tmp_path / "short.avi", "MJPG", (64, 48), 10, 3)
    long = write_video(tmp_path / "long.avi", "MJPG", (96, 64), 10, 12)
    out, saved = tmp_path / "c.jsonl", tmp_path / "out.avi"
    proc = run_cli(*stream_cli(tiny_engine, "--video", f"name=door:{short}", "--video", long, "--no-realtime",
                               "--max-new-tokens", 6, "--jsonl", out, "--save", saved))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["stream"] for r in rows} == {"door", "video1"}  # the second --video: video1
    door = [r for r in rows if r["stream"] == "door"]
    other = [r for r in rows if r["stream"] == "video1"]
    assert [r["frame"] for r in door] == [0, 1, 2] and [r["frame"] for r in other] == list(range(12))
    assert [r["id"] for r in other] == list(range(1, 13))
    assert rows[-1]["stream"] == "video1"  # it went on after door had ended
    vl = FlashVL.load(tiny_engine)
    for clip, got in ((short, door), (long, other)):
        assert [r["caption"] for r in got] == [vl.generate(f, "Describe the image.", max_new_tokens=6).text
                                               for f in decoded(clip)]
    vl.close()
    lines = proc.stdout.splitlines()
    assert sorted(line.split(":")[0] for line in lines) == sorted(
        [f"door #{i + 1} frame {i}" for i in range(3)] + [f"video1 #{i + 1} frame {i}" for i in range(12)])
    assert "stream door: 3 captions, 0 unchanged from 3 frames" in proc.stderr
    assert "stream video1: 12 captions, 0 unchanged from 12 frames" in proc.stderr
    assert "all 2 streams: 15 captions, 0 unchanged from 15 frames" in proc.stderr
    for name, n in (("door", 3), ("video1", 12)):  # one video per stream: OUT.NAME.avi
        path = tmp_path / f"out.{name}.avi"
        assert f"saved {path}: {n} frames" in proc.stderr
        assert int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT)) == n
    assert not saved.exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_a_stop_signal_stops_every_stream_and_finishes_every_output(tiny_engine, tmp_path, sig):
    a = write_video(tmp_path / "a.avi", "MJPG", (64, 48), 30, 20)
    b = write_video(tmp_path / "b.avi", "MJPG", (96, 64), 30, 20)
    out, saved = tmp_path / "c.jsonl", tmp_path / "out.mp4"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, *stream_cli(tiny_engine, "--video", f"name=a:{a}", "--video",
                                                         f"name=b:{b}", "--loop", "--max-new-tokens", 16, "--jsonl",
                                                         out, "--save", saved)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: proc.poll() is not None or (out.exists() and {json.loads(line)["stream"] for line in
                                                                         out.read_text().splitlines()} == {"a", "b"}),
                   "captions of both streams")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=WAIT_S)
    finally:
        proc.kill()
    assert proc.returncode == -sig, stderr
    assert "Traceback" not in stderr and "stream a: " in stderr and "stream b: " in stderr, stderr
    assert "all 2 streams: " in stderr
    for line in out.read_text().splitlines():  # every line whole
        assert json.loads(line)["stream"] in ("a", "b")
    for name in "ab":  # both videos finalised: an mp4 without its index does not open
        cap = cv2.VideoCapture(str(tmp_path / f"out.{name}.mp4"))
        assert cap.isOpened() and cap.read()[0] and f"saved {tmp_path / f'out.{name}.mp4'}: " in stderr


def test_cli_a_source_that_does_not_open_fails_the_run_before_any_caption(tiny_engine, tmp_path):
    clip = write_video(tmp_path / "clip.avi", "MJPG", (64, 48), 10, 3)
    out = tmp_path / "c.jsonl"
    proc = run_cli(*stream_cli(tiny_engine, "--video", clip, "--video", f"name=gone:{tmp_path / 'missing.mp4'}",
                               "--jsonl", out), timeout=60)
    assert_one_line_error(proc, "stream gone: --video", "missing.mp4: no such file")
    assert proc.stdout == "" and (not out.exists() or out.read_text() == "")


@pytest.mark.parametrize("args, needles", [
    (["--video", "name=a:CLIP", "--video", "name=a:CLIP"], ["stream name 'a' is given to two sources"]),
    (["--video", "name=video1:CLIP", "--video", "CLIP", "--video", "CLIP"], ["'video1' is given to two sources",
                                                                             "name=NAME:"]),
    (["--video", "name=front door:CLIP"], ["expected name=NAME:SOURCE", "./name=..."]),
    (["--camera", "name=yard"], ["--camera name=yard: expected name=NAME:SOURCE"]),
    (["--camera", "name=yard:one"], ["--camera name=yard:one: expected a device index"]),
    (["--camera", "0", "--camera", "1", "--loop"], ["--loop repeats a file given with --video"]),
    (["--video", "CLIP", "--video", "CLIP", "--show"], ["--show draws one source", "got 2 (video0, video1)"]),
    (["--video", "OUT0", "--video", "CLIP", "--save", "OUT"], ["--video and --save name the same file",
                                                                 "out.video0.avi"]),
])
def test_cli_mistakes_with_several_sources_are_one_line_errors(tiny_engine, tmp_path, args, needles):
    """OUT0 is the first stream's video of --save OUT (out.video0.avi), given as an input."""
    clip = write_video(tmp_path / "clip.avi", "MJPG", (64, 48), 10, 3)
    (tmp_path / "out.video0.avi").write_bytes(clip.read_bytes())
    paths = {"CLIP": clip, "OUT0": tmp_path / "out.video0.avi", "OUT": tmp_path / "out.avi"}
    args = [a.replace("CLIP", str(clip)) if a.startswith("name=") else str(paths.get(a, a)) for a in args]
    assert_one_line_error(run_cli(*stream_cli(tiny_engine, *args), timeout=60), *needles)
    assert (tmp_path / "out.video0.avi").read_bytes() == clip.read_bytes()
