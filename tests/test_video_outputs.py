"""Caption outputs (runtime.video.outputs): JSON Lines and the captioned video, read back with real OpenCV."""

from __future__ import annotations

import json
import math
import os
import sys
import threading

import cv2
import numpy as np
import pytest

from runtime.errors import FlashVLError
from runtime.video import outputs
from runtime.video.outputs import JsonlWriter, VideoSaver

CAPTION = "A person in a red jacket crosses a busy street in front of a yellow taxi."


def one_line_error(exc_info, *needles: str) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# ----------------------------------------------------------------------------- JsonlWriter


def test_jsonl_lines_parse_back_and_are_flushed_before_close(tmp_path):
    path = tmp_path / "captions.jsonl"
    w = JsonlWriter(str(path))
    records = [{"seq": 0, "caption": "Café “olé” — 東京", "latency_ms": np.float32(12.5)},
               {"seq": 1, "caption": "line\nbreak", "boxes": np.arange(4), "ok": True, "none": None}]
    for i, r in enumerate(records):
        w.write(r)
        lines = path.read_text(encoding="utf-8").splitlines()  # read while the writer is still open
        assert len(lines) == i + 1
    assert json.loads(lines[0]) == {"seq": 0, "caption": "Café “olé” — 東京", "latency_ms": 12.5}
    assert json.loads(lines[1]) == {"seq": 1, "caption": "line\nbreak", "boxes": [0, 1, 2, 3], "ok": True,
                                    "none": None}
    assert "東京" in lines[0]  # ensure_ascii=False: readable in the file, not \\u escapes
    w.close()
    w.close()
    with pytest.raises(ValueError, match="after close"):
        w.write({"seq": 2})


@pytest.mark.parametrize("bad, where", [({"latency_ms": math.nan}, "latency_ms"),
                                        ({"t": {"decode": [1.0, math.inf]}}, "t.decode[1]"),
                                        ({"x": np.float32("nan")}, "x")])
def test_jsonl_refuses_nan_and_writes_nothing(tmp_path, bad, where):
    path = tmp_path / "c.jsonl"
    with JsonlWriter(str(path)) as w:
        with pytest.raises(ValueError) as e:
            w.write(bad)
        one_line_error(e, "NaN", where)
        w.write({"seq": 1})  # still usable
    assert path.read_text() == '{"seq": 1}\n'


def test_jsonl_appends_so_a_restarted_run_keeps_the_earlier_captions(tmp_path):
    path = tmp_path / "c.jsonl"
    with JsonlWriter(str(path)) as w:
        w.write({"id": 1, "caption": "first run"})
    with open(path, "a") as f:
        f.write('{"id": 2, "capt')  # a run killed in the middle of a line
    with JsonlWriter(str(path)) as w:
        w.write({"id": 1, "caption": "second run"})
    records = [json.loads(line) for line in path.read_text().splitlines()]  # every line one JSON object
    assert [r["caption"] for r in records] == ["first run", "second run"]  # the cut half-record is dropped


def test_jsonl_dash_is_stdout_and_stays_open(capsys):
    w = JsonlWriter("-")
    w.write({"seq": 3, "caption": "a cat"})
    w.close()
    assert not sys.stdout.closed
    print("after")
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[0]) == {"seq": 3, "caption": "a cat"} and out[1] == "after"


def test_jsonl_missing_folder_and_folder_target(tmp_path):
    missing = tmp_path / "nope" / "c.jsonl"
    with pytest.raises(FlashVLError) as e:
        JsonlWriter(str(missing))
    one_line_error(e, f"--jsonl {missing}", f"folder {tmp_path / 'nope'} does not exist", "mkdir -p")
    with pytest.raises(FlashVLError) as e:
        JsonlWriter(str(tmp_path))
    one_line_error(e, "is a folder")


def test_jsonl_writes_from_many_threads_stay_whole_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    with JsonlWriter(str(path)) as w:
        threads = [threading.Thread(target=lambda k=k: [w.write({"k": k, "i": i, "pad": "x" * 500})
                                                        for i in range(50)]) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted((r["k"], r["i"]) for r in rows) == [(k, i) for k in range(4) for i in range(50)]


# ----------------------------------------------------------------------------- VideoSaver


def scene(i: int, w: int = 320, h: int = 240) -> np.ndarray:
    """A smooth frame with a moving square: BGR uint8 [h, w, 3]."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    s = max(8, w // 10)
    x0 = (i * 7) % (w - s)
    img[h // 4:h // 4 + s, x0:x0 + s] = (0, 0, 255)
    return img


def read_video(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("ext", [".mp4", ".avi"])
def test_saved_video_has_every_frame_with_the_caption(tmp_path, ext):
    path = tmp_path / f"out{ext}"
    saver = VideoSaver(str(path), fps=12.5, lossless=True)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".flashvl-probe")]  # the probe is gone
    sources = [scene(i) for i in range(40)]
    for i, img in enumerate(sources):
        saver.offer(img, CAPTION, f"#{i}")
    saver.close()
    assert (saver.frames_written, saver.dropped) == (40, 0)

    frames = read_video(path)
    assert len(frames) == 40 and frames[0].shape == (240, 320, 3)
    assert cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FPS) == pytest.approx(12.5, rel=0.01)
    for src, got in zip(sources, frames):
        assert mad(got[:120], src[:120]) < 4  # the scene, through a lossy codec
        assert mad(got[-30:], src[-30:]) > 40  # the caption box and text
    # The i-th frame is the i-th source: the red square moved between them and the file kept the order.
    assert mad(frames[5][:120], sources[5][:120]) < mad(frames[5][:120], sources[9][:120])


def test_frames_of_other_sizes_are_fitted_to_the_first(tmp_path):
    path = tmp_path / "mixed.avi"
    with VideoSaver(str(path), fps=30, lossless=True) as saver:
        saver.offer(scene(0, 320, 240), CAPTION)
        saver.offer(scene(0, 640, 480), CAPTION)  # a camera that reconnected at a higher resolution
        saver.offer(scene(0, 160, 120), CAPTION)
        saver.offer(scene(0, 321, 241), CAPTION)
    frames = read_video(path)
    assert [f.shape for f in frames] == [(240, 320, 3)] * 4
    for f in frames[1:]:
        assert mad(f[:120], frames[0][:120]) < 8  # the same scene, rescaled to the file's size


def test_odd_first_frame_size_is_cropped_to_even(tmp_path):
    path = tmp_path / "odd.mp4"
    with VideoSaver(str(path), fps=30, lossless=True) as saver:
        for i in range(3):
            saver.offer(scene(i, 161, 121), CAPTION)
    frames = read_video(path)
    assert len(frames) == 3 and frames[0].shape == (120, 160, 3)
    assert mad(frames[0][-20:], scene(0, 161, 121)[100:120, :160]) > 30  # the caption was not cropped off


class Gate:
    """A draw_caption stand-in that holds the writer thread until released: a deliberately slow encoder."""

    def __init__(self, monkeypatch):
        self.open = threading.Event()
        self.calls = 0
        monkeypatch.setattr(outputs, "draw_caption", self)

    def __call__(self, image, caption, header=None):
        self.calls += 1
        assert self.open.wait(10), "the test never opened the gate"
        return image


def run_in_thread(fn) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def test_a_slow_writer_drops_and_counts_instead_of_blocking(tmp_path, monkeypatch):
    gate = Gate(monkeypatch)
    saver = VideoSaver(str(tmp_path / "drop.avi"), fps=30, lossless=False, queue_frames=2)
    img = scene(0)
    burst = run_in_thread(lambda: [saver.offer(img, CAPTION) for _ in range(50)])
    burst.join(5)
    assert not burst.is_alive(), "offer() blocked on a full queue"  # the gate is still shut
    # At most one frame in the writer's hands plus two queued; every other frame was dropped and counted.
    assert saver.dropped >= 50 - 3 and saver.frames_written == 0
    gate.open.set()
    saver.close()
    assert saver.frames_written + saver.dropped == 50
    assert saver.frames_written == gate.calls and 1 <= saver.frames_written <= 3
    assert len(read_video(tmp_path / "drop.avi")) == saver.frames_written


def test_lossless_waits_for_the_writer_and_keeps_every_frame(tmp_path, monkeypatch):
    gate = Gate(monkeypatch)
    saver = VideoSaver(str(tmp_path / "all.avi"), fps=30, lossless=True, queue_frames=2)
    img = scene(0)
    producer = run_in_thread(lambda: [saver.offer(img, CAPTION) for _ in range(10)])
    producer.join(0.5)
    assert producer.is_alive(), "lossless offer() did not wait for a full queue"
    gate.open.set()
    producer.join(10)
    assert not producer.is_alive()
    saver.close()
    assert (saver.frames_written, saver.dropped) == (10, 0)
    assert len(read_video(tmp_path / "all.avi")) == 10


def test_close_from_another_thread_stops_a_waiting_producer(tmp_path, monkeypatch):
    gate = Gate(monkeypatch)
    saver = VideoSaver(str(tmp_path / "stop.avi"), fps=30, lossless=True, queue_frames=2)
    img = scene(0)
    producer = run_in_thread(lambda: [saver.offer(img, CAPTION) for _ in range(1000)])
    producer.join(0.2)
    assert producer.is_alive()
    closer = run_in_thread(saver.close)  # waits for the writer, so open the gate too
    gate.open.set()
    closer.join(10)
    producer.join(10)
    assert not closer.is_alive() and not producer.is_alive(), "close() and a waiting offer() deadlocked"
    n = saver.frames_written
    assert 1 <= n < 1000 and len(read_video(tmp_path / "stop.avi")) == n
    saver.offer(img, CAPTION)  # after close: a no-op
    saver.close()
    assert saver.frames_written == n


def test_a_writer_failure_is_raised_by_close(tmp_path):
    saver = VideoSaver(str(tmp_path / "bad.mp4"), fps=30, lossless=True)
    saver.offer(scene(0), CAPTION)
    saver.offer(np.zeros((240, 320), np.uint8), CAPTION)  # grayscale: draw_caption refuses it on the thread
    for i in range(5):
        saver.offer(scene(i), CAPTION)  # never blocks, even lossless, once the file is broken
    with pytest.raises(FlashVLError) as e:
        saver.close()
    one_line_error(e, "--save", "bad.mp4", "failed after 1 frames", "BGR uint8 [H, W, 3]")
    assert saver.frames_written == 1 and saver.dropped == 6
    saver.close()  # reported once; a second close is quiet


def test_a_video_already_at_the_path_is_replaced_only_by_a_finished_one(tmp_path):
    path = tmp_path / "kept.mp4"
    with VideoSaver(str(path), fps=30, lossless=True) as first:
        for i in range(10):
            first.offer(scene(i), CAPTION)
    before = path.read_bytes()
    broken = VideoSaver(str(path), fps=30, lossless=True)  # a run that fails half-way
    broken.offer(scene(0), CAPTION)
    broken.offer(np.zeros((240, 320), np.uint8), CAPTION)
    with pytest.raises(FlashVLError) as e:
        broken.close()
    one_line_error(e, "kept.mp4 is left as it was", "the frames written are in")
    assert path.read_bytes() == before and len(read_video(path)) == 10
    running = VideoSaver(str(path), fps=30, lossless=True)  # a run still going (or killed): the old file plays
    for i in range(3):
        running.offer(scene(i), CAPTION)
    assert path.read_bytes() == before
    running.close()
    assert len(read_video(path)) == 3  # replaced once finished
    assert [p for p in os.listdir(tmp_path) if p.startswith(".kept.mp4")] == [os.path.basename(broken.partial)]


def test_replacing_keeps_the_mode_and_a_killed_runs_partial_is_removed(tmp_path):
    import subprocess
    path = tmp_path / "v.avi"
    with VideoSaver(str(path), fps=30, lossless=True) as first:
        first.offer(scene(0), CAPTION)
    os.chmod(path, 0o640)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".v.avi.{int(dead.stdout)}-1.partial.avi"  # what a SIGKILLed run leaves
    stale.write_bytes(b"half a video")
    with VideoSaver(str(path), fps=30, lossless=True) as second:
        second.offer(scene(1), CAPTION)
        second.offer(scene(2), CAPTION)
    assert not stale.exists() and len(read_video(path)) == 2
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o640)


def test_cv2_errors_on_the_writer_thread_become_one_line(tmp_path, monkeypatch):
    def broken(image, caption, header=None):
        raise cv2.error("OpenCV(4.8.0) /io/imgproc.cpp:1\nerror: (-215:Assertion failed) in function 'x'\n")

    monkeypatch.setattr(outputs, "draw_caption", broken)
    saver = VideoSaver(str(tmp_path / "e.avi"), fps=30)
    saver.offer(scene(0), CAPTION)
    with pytest.raises(FlashVLError) as e:
        saver.close()
    one_line_error(e, "error: OpenCV(4.8.0)", "Assertion failed")


@pytest.mark.parametrize("fps", [0, -5, math.nan, math.inf, None])
def test_unusable_fps_becomes_30(tmp_path, fps):
    path = tmp_path / "f.avi"
    with VideoSaver(str(path), fps=fps, lossless=True) as saver:
        assert saver.fps == 30.0
        saver.offer(scene(0), CAPTION)
    assert cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FPS) == pytest.approx(30.0)


def test_mkv_and_mov_open(tmp_path):
    for ext in (".mkv", ".mov", ".M4V"):
        with VideoSaver(str(tmp_path / f"v{ext}"), fps=30, lossless=True) as saver:
            saver.offer(scene(0), CAPTION)
        assert len(read_video(tmp_path / f"v{ext}")) == 1


def test_bad_targets_are_one_line_errors_before_any_frame(tmp_path):
    with pytest.raises(FlashVLError) as e:
        VideoSaver(str(tmp_path / "out.gif"), fps=30)
    one_line_error(e, "'.gif'", ".mp4", ".avi", ".mkv", "out.mp4")
    with pytest.raises(FlashVLError) as e:
        VideoSaver(str(tmp_path / "out"), fps=30)
    one_line_error(e, "(none)")
    with pytest.raises(FlashVLError) as e:
        VideoSaver(str(tmp_path / "missing" / "out.mp4"), fps=30)
    one_line_error(e, "--save", f"folder {tmp_path / 'missing'} does not exist", "mkdir -p")
    with pytest.raises(FlashVLError) as e:
        VideoSaver(str(tmp_path / "q.mp4"), fps=30, queue_frames=0)
    one_line_error(e, "queue_frames")
    assert os.listdir(tmp_path) == []  # nothing written, not even a probe


def test_a_codec_this_opencv_lacks_says_try_avi(tmp_path, monkeypatch):
    real = cv2.VideoWriter

    def no_mp4(path, fourcc, fps, size):
        return real(path, cv2.VideoWriter_fourcc(*"XXXX") if path.endswith(".mp4") else fourcc, fps, size)

    monkeypatch.setattr(outputs.cv2, "VideoWriter", no_mp4)
    with pytest.raises(FlashVLError) as e:
        VideoSaver(str(tmp_path / "x.mp4"), fps=30)
    one_line_error(e, "cannot encode .mp4", "mp4v", ".avi")
    assert os.listdir(tmp_path) == []
    VideoSaver(str(tmp_path / "x.avi"), fps=30).close()  # the suggested fix works


def test_close_twice_and_close_without_frames(tmp_path):
    saver = VideoSaver(str(tmp_path / "empty.mp4"), fps=30)
    saver.close()
    saver.close()
    saver.offer(scene(0), CAPTION)
    assert (saver.frames_written, saver.dropped) == (0, 0) and not (tmp_path / "empty.mp4").exists()
