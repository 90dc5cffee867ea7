"""runtime.video.sources on real OpenCV and videos written here: clean, truncated and damaged files, pacing,
looping, reconnecting (fake captures and a real HTTP stream) and every user-facing error."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.video.frame import SourceError, VideoSource
from runtime.video.sources import GST_TAIL, Backoff, FrameReader, check_opencv_backend, open_capture
from tests.video_files import frame_image, frame_number, serve, write_video

def read_all(path: Path, **kw) -> tuple[FrameReader, list]:
    reader = FrameReader(VideoSource.file(path), realtime=False, **kw)
    reader.open()
    return reader, list(reader.frames())


def one_line_error(fn, *needles: str) -> str:
    with pytest.raises(SourceError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("ext, fourcc, size, fps, n", [
    ("mp4", "mp4v", (160, 120), 30.0, 24),
    ("mp4", "mp4v", (98, 62), 7.5, 12),
    ("avi", "MJPG", (320, 240), 15.0, 24),
    ("avi", "XVID", (98, 62), 30.0, 2),
    ("mkv", "XVID", (160, 120), 7.5, 12),
    ("mkv", "mp4v", (320, 240), 15.0, 24),
    ("mkv", "MJPG", (98, 62), 30.0, 1),
])
def test_clean_file_comes_back_whole_and_in_order(tmp_path, ext, fourcc, size, fps, n):
    reader, frames = read_all(write_video(tmp_path / f"clip.{ext}", fourcc, size, fps, n))
    assert [frame_number(f.image) for f in frames] == list(range(n))
    assert [f.index for f in frames] == [f.seq for f in frames] == list(range(n))
    assert [f.media_s for f in frames] == pytest.approx([i / fps for i in range(n)])
    for f in frames:
        assert f.image.shape == (size[1], size[0], 3) and f.image.dtype == np.uint8 and f.image.flags.c_contiguous
    st = reader.stats
    assert (st.frames, st.corrupt, st.missing, st.notes, st.loops) == (n, 0, 0, [], 0)
    assert st.fps == pytest.approx(fps)


def test_truncated_avi_ends_cleanly_with_missing_frames_and_a_note(tmp_path):
    path = write_video(tmp_path / "clip.avi", "MJPG", (160, 120), 30, 60)
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    reader, frames = read_all(path)
    got = [frame_number(f.image) for f in frames]
    assert 10 < len(got) < 60 and got == list(range(len(got)))
    assert reader.stats.missing == 60 - len(got) and reader.stats.corrupt == 0
    assert reader.stats.notes == [f"clip.avi: ended at frame {len(got)} of 60 (truncated?)"]


def test_truncated_mp4_does_not_open(tmp_path):
    path = write_video(tmp_path / "clip.mp4", "mp4v", (160, 120), 30, 30)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the moov atom is at the end: lost
    one_line_error(lambda: FrameReader(VideoSource.file(path)).open(),
                   "--video", "clip.mp4", "cannot be decoded", "truncated", "re-encode")


@pytest.mark.parametrize("ext, fourcc", [("mp4", "mp4v"), ("avi", "MJPG")])
def test_corrupt_middle_skips_the_damage_and_counts_it(tmp_path, ext, fourcc):
    path = write_video(tmp_path / f"clip.{ext}", fourcc, (160, 120), 30, 60)
    data = bytearray(path.read_bytes())
    a, b = int(len(data) * 0.45), int(len(data) * 0.55)  # random bytes over 10% of the middle
    data[a:b] = np.random.default_rng(0).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    reader, frames = read_all(path)
    got = [frame_number(f.image) for f in frames]
    assert got[:10] == list(range(10)) and got[-5:] == list(range(55, 60))  # before and after the damage
    assert got == sorted(got), "a frame came back twice or out of order"
    assert [f.index for f in frames] == sorted({f.index for f in frames})
    st = reader.stats
    assert st.corrupt > 0 and st.missing == 0 and st.corrupt + len(frames) == 60
    assert any("could not be decoded" in note for note in st.notes)


def test_realtime_paces_a_file_like_a_camera(tmp_path):
    path = write_video(tmp_path / "clip.mp4", "mp4v", (160, 120), 30, 15)
    start = time.perf_counter()
    frames = list(FrameReader(VideoSource.file(path), realtime=True).frames())
    assert time.perf_counter() - start >= 0.4  # 14 frame gaps at 30 fps = 0.467 s
    t0 = frames[0].t_capture
    for f in frames:
        assert f.t_capture - t0 >= f.media_s - 0.005  # never handed out before its media time
    assert [f.media_s for f in frames] == sorted(f.media_s for f in frames)
    assert len(list(FrameReader(VideoSource.file(path), realtime=False).frames())) == 15


def test_loop_keeps_counting_seq_and_media_time(tmp_path):
    n = 10
    reader = FrameReader(VideoSource.file(write_video(tmp_path / "clip.avi", "MJPG", (98, 62), 30, n), loop=True),
                         realtime=False)
    frames, gen = [], reader.frames()
    for f in gen:
        frames.append(f)
        if len(frames) == 2 * n + 3:
            break
    gen.close()
    assert [f.seq for f in frames] == list(range(2 * n + 3))
    assert [f.index for f in frames] == [i % n for i in range(2 * n + 3)]
    assert [frame_number(f.image) for f in frames] == [f.index for f in frames]
    assert [f.media_s for f in frames] == pytest.approx([i / 30 for i in range(2 * n + 3)])
    assert reader.stats.loops == 2 and reader.stats.corrupt == reader.stats.missing == 0


def test_stop_from_another_thread_ends_frames_quickly(tmp_path):
    path = write_video(tmp_path / "clip.avi", "MJPG", (98, 62), 30, 10)
    stop, stopped_at = threading.Event(), []
    timer = threading.Timer(0.3, lambda: (stopped_at.append(time.perf_counter()), stop.set()))
    timer.start()
    frames = list(FrameReader(VideoSource.file(path, loop=True), realtime=True, stop=stop).frames())
    assert time.perf_counter() - stopped_at[0] < 0.2 and len(frames) > 3


# ----------------------------------------------------------------------------- fake captures


class FakeCap:
    """read() hands out `items` in order ("fail" = a failed read), then fails; get() knows fps and frame count."""

    def __init__(self, items=(), fps: float = 25.0, count: int = 0):
        self.items, self.fps, self.count, self.released = list(items), fps, count, False

    def isOpened(self):
        return not self.released

    def read(self):
        item = self.items.pop(0) if self.items else "fail"
        return (False, None) if isinstance(item, str) else (True, item)

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: self.fps, cv2.CAP_PROP_FRAME_COUNT: self.count}.get(prop, 0.0)

    def set(self, prop, value):
        return False

    def release(self):
        self.released = True


def scripted_opener(*results):
    """An opener that returns (or raises) results[k] on its k-th call, then raises."""
    calls = []

    def opener(source):
        calls.append(source)
        result = results[len(calls) - 1] if len(calls) <= len(results) else SourceError("gone")
        if isinstance(result, Exception):
            raise result
        return result
    return opener, calls


def bgr(i: int) -> np.ndarray:
    return frame_image(i, 64, 48)


def test_file_pass_without_any_frame_does_not_loop_forever():
    opener, calls = scripted_opener(FakeCap(["fail"], count=0), FakeCap(["fail"]))
    reader = FrameReader(VideoSource.file("nothing.mp4", loop=True), realtime=False, opener=opener)
    assert list(reader.frames()) == [] and len(calls) == 1
    assert reader.stats.notes == ["nothing.mp4: no frame decoded in a whole pass; not looping"]


class ClockCap(FakeCap):
    """A file whose fps OpenCV does not know: only POS_MSEC (40 ms per frame) says where a frame sits."""

    def read(self):
        self.reads = getattr(self, "reads", 0) + 1
        return super().read()

    def get(self, prop):
        return (self.reads - 1) * 40.0 if prop == cv2.CAP_PROP_POS_MSEC else super().get(prop)


def test_file_without_fps_takes_media_time_from_the_stream():
    opener, _ = scripted_opener(*[ClockCap([bgr(0), bgr(1), bgr(2)], fps=0.0, count=3) for _ in range(2)])
    reader = FrameReader(VideoSource.file("clip.ts", loop=True), realtime=False, opener=opener)
    gen, frames = reader.frames(), []
    for f in gen:
        frames.append(f)
        if len(frames) == 5:
            break
    gen.close()
    assert reader.stats.fps == 0.0 and reader.stats.loops == 1
    assert [f.media_s for f in frames] == pytest.approx([0, 0.04, 0.08, 0.12, 0.16])  # the 2nd pass follows on
    assert [f.index for f in frames] == [0, 1, 2, 0, 1]


def test_malformed_live_frames_are_counted_or_converted():
    gray, bgra = bgr(1)[:, :, 0].copy(), cv2.cvtColor(bgr(2), cv2.COLOR_BGR2BGRA)
    items = [bgr(0), None, gray, np.zeros((48, 64, 3), np.float32), bgra, np.zeros((0, 0, 3), np.uint8),
             np.zeros((48, 64, 2), np.uint8), bgr(3)]
    opener, _ = scripted_opener(FakeCap(items))
    reader = FrameReader(VideoSource.camera(0), opener=opener)
    gen, frames = reader.frames(), []
    for f in gen:
        frames.append(f)
        if len(frames) == 4:
            break
    gen.close()
    assert [frame_number(f.image) for f in frames] == [0, 1, 2, 3]
    assert all(f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 and f.image.flags.c_contiguous
               for f in frames)
    assert [f.seq for f in frames] == [f.index for f in frames] == [0, 1, 2, 3]
    assert all(f.media_s is None for f in frames) and reader.stats.corrupt == 4 and reader.stats.outages == 0


def test_live_source_reconnects_after_failed_attempts(caplog):
    caplog.set_level(logging.DEBUG, logger="runtime.video.sources")
    opener, calls = scripted_opener(FakeCap([bgr(0), bgr(1), bgr(2)]), SourceError("refused"), SourceError("refused"),
                                    FakeCap([bgr(3), bgr(4), bgr(5)]))
    backoff = Backoff(0.001, 0.004)
    reader = FrameReader(VideoSource.url("rtsp://cam/stream"), opener=opener, backoff=backoff)
    gen, frames = reader.frames(), []
    for f in gen:
        frames.append(f)
        if len(frames) == 6:
            break
    gen.close()
    assert [frame_number(f.image) for f in frames] == [f.seq for f in frames] == list(range(6))
    assert len(calls) == 4 and reader.stats.outages == 1 and reader.stats.outage_s > 0
    assert backoff.next() == 0.001  # reset after the success
    text = caplog.text
    assert "--url rtsp://cam/stream: no frames after 3 frames; reopening (attempt 1 in 0.0 s)" in text
    assert "attempt 1 failed (refused)" in text and "attempt 2 failed (refused)" in text
    assert re.search(r"--url rtsp://cam/stream: back after \d+\.\d s, 3 attempts", text)


def test_stop_during_an_outage_ends_frames_at_once():
    opener, _ = scripted_opener(FakeCap([bgr(0)]))  # then every reopen fails
    stop = threading.Event()
    reader = FrameReader(VideoSource.camera(0), stop=stop, opener=opener, backoff=Backoff(0.05, 0.1))
    stopped_at = []
    threading.Timer(0.3, lambda: (stopped_at.append(time.perf_counter()), stop.set())).start()
    frames = list(reader.frames())
    assert time.perf_counter() - stopped_at[0] < 0.1 and len(frames) == 1
    assert reader.stats.outages == 0


def test_backoff_doubles_to_its_maximum_and_resets():
    backoff = Backoff()
    assert [backoff.next() for _ in range(7)] == [0.5, 1, 2, 4, 8, 8, 8]
    backoff.reset()
    assert backoff.next() == 0.5
    one_line_error(lambda: Backoff(2.0, 1.0), "initial_s <= max_s")


# ----------------------------------------------------------------------------- a real stream over HTTP


def test_url_stream_reconnects_through_opencv_and_ffmpeg(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="runtime.video.sources")
    n = 20
    write_video(tmp_path / "clip.avi", "MJPG", (160, 120), 30, n)
    servers = [serve(tmp_path)]
    port = servers[0].server_address[1]
    stop = threading.Event()
    watchdog = threading.Timer(30, stop.set)  # a hang fails the asserts below instead of the whole run
    watchdog.start()
    reader = FrameReader(VideoSource.url(f"http://127.0.0.1:{port}/clip.avi"), stop=stop, backoff=Backoff(0.05, 0.2))
    got, after_restart = [], []
    try:
        for f in reader.frames():
            got.append(frame_number(f.image))
            if len(got) == n + 5:  # the file's end was an outage and the stream came back
                assert reader.stats.outages == 1
                servers[0].shutdown()
                servers[0].server_close()
                threading.Timer(0.5, lambda: servers.append(serve(tmp_path, port))).start()
            if reader.stats.outages == 2:
                after_restart.append(got[-1])
                if len(after_restart) == 5:
                    break
    finally:
        stop.set()
        watchdog.cancel()
        for server in servers[1:]:
            server.shutdown()
            server.server_close()
    assert got[:n + 5] == list(range(n)) + list(range(5)) and reader.stats.fps == 30
    assert after_restart == list(range(5))
    attempts = [int(a) for a in re.findall(r"back after [\d.]+ s, (\d+) attempts", caplog.text)]
    assert len(attempts) == 2 and attempts[1] >= 2, caplog.text  # the server was down for a while
    assert "attempt 1 failed" in caplog.text


def test_live_source_that_does_not_open_at_start_is_an_error():
    one_line_error(lambda: FrameReader(VideoSource.url("http://127.0.0.1:1/none.avi")).open(),
                   "--url http://127.0.0.1:1/none.avi", "cannot open the stream", "ffplay")


# ----------------------------------------------------------------------------- errors and backends

BUILD_INFO = """
General configuration for OpenCV 4.8.0 =====================================
  Video I/O:
    DC1394:                      NO
    FFMPEG:                      {ffmpeg}
      avcodec:                   YES (58.134.100)
    GStreamer:                   {gst}
    v4l/v4l2:                    {v4l}

  Parallel framework:            TBB (ver 2021.5 interface 12050)
"""


def build_info(ffmpeg="YES", gst="NO", v4l="YES (linux/videodev2.h)") -> str:
    return BUILD_INFO.format(ffmpeg=ffmpeg, gst=gst, v4l=v4l)


def has_gstreamer() -> bool:
    return bool(re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()))


def test_missing_file(tmp_path):
    one_line_error(lambda: open_capture(VideoSource.file(tmp_path / "nope.mp4")),
                   "--video", "nope.mp4", "no such file", "check the path")


def test_directory_is_not_a_video(tmp_path):
    one_line_error(lambda: open_capture(VideoSource.file(tmp_path)), "is a directory", "expected a video file")


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "x.mp4"
    path.write_text("this is not a video\n")
    one_line_error(lambda: open_capture(VideoSource.file(path)), "x.mp4", "not a video OpenCV can decode", "re-encode")


@pytest.mark.skipif(has_gstreamer(), reason="this OpenCV has GStreamer")
def test_gst_on_an_opencv_without_gstreamer():
    one_line_error(lambda: open_capture(VideoSource.gst("videotestsrc ! appsink")),
                         "--gst videotestsrc ! appsink", "without GStreamer", cv2.__version__, str(cv2.__file__),
                         "opencv-python-headless", "python3-opencv", "--system-site-packages",
                         "requirements-jetson.txt", "-DWITH_GSTREAMER=ON", "--url/--video")


def test_check_backend_reads_the_build_info():
    gst = VideoSource.gst("videotestsrc ! appsink")
    check_opencv_backend(gst, build_info(gst="YES (1.20.3)"))
    one_line_error(lambda: check_opencv_backend(gst, build_info()), "without GStreamer")
    check_opencv_backend(VideoSource.url("rtsp://cam"), build_info(ffmpeg="NO", gst="YES (1.20.3)"))
    one_line_error(lambda: check_opencv_backend(VideoSource.url("rtsp://cam"), build_info(ffmpeg="NO")),
                   "--url rtsp://cam", "neither FFmpeg nor GStreamer", "opencv-python-headless")
    one_line_error(lambda: check_opencv_backend(VideoSource.file("a.mp4"), build_info(ffmpeg="NO")), "neither FFmpeg")
    check_opencv_backend(VideoSource.camera(0), build_info())
    check_opencv_backend(VideoSource.file("a.mp4"), "no video section in this build")  # cannot tell: let open say
    if sys.platform.startswith("linux"):
        one_line_error(lambda: check_opencv_backend(VideoSource.camera(0), build_info(v4l="NO")), "without V4L2")


def test_gst_pipeline_without_appsink(monkeypatch):
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: build_info(gst="YES (1.20.3)"))
    one_line_error(lambda: open_capture(VideoSource.gst("videotestsrc ! videoconvert ! autovideosink")),
                   "no appsink", GST_TAIL)
    if not has_gstreamer():  # the real backend is missing, so the pipeline cannot start
        one_line_error(lambda: open_capture(VideoSource.gst("videotestsrc ! appsink")),
                       "GStreamer could not start the pipeline", "gst-launch-1.0")


@pytest.mark.skipif(not sys.platform.startswith("linux") or Path("/dev/video57").exists(),
                    reason="needs Linux without a /dev/video57")
def test_camera_that_does_not_exist():
    one_line_error(lambda: FrameReader(VideoSource.camera(57)).open(),
                   "--camera 57", "/dev/video57", "no such device", "v4l2-ctl --list-devices")
