"""The caption loop (runtime.video.captioner): cadence, change gate, overlap, latest-frame semantics,
stop, errors; with a fake model for behaviour and the tiny engine for parity with generate()."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from runtime.errors import Cancelled, FlashVLError
from runtime.video import Cadence, FrameFeed, PromptConfig
from runtime.video.captioner import CaptionEvent, CaptionPiece, grab_delay, open_stream
from tests.video_fakes import FakeModel, gray_frames


def events_of(stream) -> list[CaptionEvent]:
    with stream:
        return [e for e in stream if isinstance(e, CaptionEvent)]


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_lossless_source_captions_every_frame_in_order():
    levels = list(range(0, 240, 4))
    events = events_of(open_stream(FakeModel(), gray_frames(levels), Cadence(), realtime=False))
    assert [e.caption.strip() for e in events] == [f"gray {v}" for v in levels]
    assert [e.frame for e in events] == list(range(len(levels)))
    assert [e.id for e in events] == list(range(1, len(levels) + 1))
    assert all(e.dropped == 0 and not e.repeat and e.tokens == 2 for e in events)


def test_interval_runs_on_media_time_for_lossless_sources():
    frames = [(f, i / 10) for i, f in enumerate(gray_frames(range(60)))]  # 10 fps, 6 s
    stream = open_stream(FakeModel(), frames, Cadence(interval=1.0), realtime=False)
    events = events_of(stream)
    assert [e.frame for e in events] == [0, 10, 20, 30, 40, 50]
    assert [e.dropped for e in events] == [0, 9, 9, 9, 9, 9]
    assert [e.media_s for e in events] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert stream.stats().dropped == 54 and stream.stats().frames == 60  # 45 between captions, 9 after the last


def test_change_gate_re_reports_the_last_caption_until_the_scene_changes():
    rng = np.random.default_rng(0)
    frames = gray_frames([100] * 20 + [200] * 20)
    for f in frames[20:]:  # sensor noise on the second scene must not count as change
        f += rng.integers(0, 3, f.shape, dtype=np.uint8)
    frames = [(f, i / 10) for i, f in enumerate(frames)]
    events = events_of(open_stream(FakeModel(), frames, Cadence(min_change=0.05), realtime=False))
    fresh = [e for e in events if not e.repeat]
    assert [e.frame for e in fresh] == [0, 20]
    assert fresh[0].change is None and fresh[1].change == pytest.approx(100 / 255, abs=0.01)
    for e in events:
        if e.repeat:
            want = fresh[0] if e.frame < 20 else fresh[1]
            assert (e.id, e.caption, e.finish_reason) == (want.id, want.caption, "repeat")
            assert e.change < 0.05
    assert sum(e.dropped for e in events) + len(events) == 40  # every frame accounted for


def test_unchanged_scene_is_re_reported_at_most_once_per_interval():
    frames = [(f, i / 10) for i, f in enumerate(gray_frames([50] * 50))]  # 5 s of one scene
    events = events_of(open_stream(FakeModel(), frames, Cadence(interval=1.0, min_change=0.02), realtime=False))
    assert [(e.frame, e.repeat) for e in events] == [(0, False), (10, True), (20, True), (30, True), (40, True)]


def test_overlap_encodes_the_next_frame_while_the_current_one_is_described():
    model = FakeModel(encode_s=0.08, describe_s=0.08)
    events = events_of(open_stream(model, gray_frames(range(0, 80, 10)), Cadence(), realtime=False))
    assert [e.caption.strip() for e in events] == [f"gray {v}" for v in range(0, 80, 10)]
    enc, desc = model.spans("encode"), model.spans("describe")
    assert sum(overlaps(e, d) for e in enc for d in desc) >= len(desc) - 2
    assert all(name.startswith(("flashvl-model", "flashvl-prepare")) for *_, name in model.calls)
    assert model.threads_entered == ["flashvl-model"]


def test_without_overlap_or_concurrent_encode_nothing_runs_beside_describe():
    for model, cadence in ((FakeModel(0.03, 0.03), Cadence(overlap=False)),
                           (FakeModel(0.03, 0.03, encodes_concurrently=False), Cadence())):
        events = events_of(open_stream(model, gray_frames(range(6)), cadence, realtime=False))
        assert len(events) == 6
        enc, desc = model.spans("encode"), model.spans("describe")
        assert not any(overlaps(e, d) for e in enc for d in desc)
        assert {name for w, *_, name in model.calls if w == "encode"} == {"flashvl-model"}


def test_grab_delay_times_the_next_frame_to_be_ready_when_the_caption_ends():
    assert grab_delay(None, 0.1) == 0.0 and grab_delay(1.0, None) == 0.0
    assert grab_delay(1.0, 0.2) == pytest.approx(0.78)
    assert grab_delay(0.2, 1.0) == 0.0  # preparing takes longer than describing: grab at once


def test_a_slow_model_on_a_live_feed_captions_the_present_not_a_backlog():
    """A 50 fps feed and a model that needs 0.2 s a caption: each caption is of a fresh frame, and the
    frames in between are dropped and counted, not queued."""
    model = FakeModel(describe_s=0.2)
    feed = FrameFeed()
    stop = threading.Event()
    pushed = []

    def camera():
        i = 0
        while not stop.is_set():
            feed.push(np.full((24, 32, 3), i % 256, np.uint8))
            pushed.append(i)
            i += 1
            time.sleep(0.02)

    stream = open_stream(model, feed, Cadence())
    thread = threading.Thread(target=camera)
    thread.start()
    events = []
    with stream:
        for e in stream:
            events.append(e)
            if len(events) == 12:
                break
    stop.set()
    thread.join()
    assert len(events) == 12
    # a backlog would lag by (0.2 - 0.02) s more every caption: > 2 s by the 12th
    assert max(e.latency_ms for e in events[1:]) < 1000
    assert np.mean([e.dropped for e in events[2:]]) > 3  # ~9 frames arrive per caption
    assert all(b.frame > a.frame for a, b in zip(events, events[1:]))
    assert sum(e.dropped for e in events) + len(events) == events[-1].frame + 1


def test_stop_cancels_the_call_in_flight_within_a_second():
    model = FakeModel(describe_s=30)
    stream = open_stream(model, gray_frames([1, 2, 3]), Cadence(), realtime=False)
    deadline = time.perf_counter() + 10
    while "describe" not in model.started and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert "describe" in model.started  # the first caption is now in its 30 s
    t0 = time.perf_counter()
    stream.stop()
    assert time.perf_counter() - t0 < 1.5
    assert list(stream) == [] and model.resumed == 1 and not model.cancelled.is_set()


def test_frames_from_an_iterable_are_checked_and_the_error_reaches_the_consumer():
    frames = gray_frames([10, 20]) + [np.zeros((8, 8, 3), np.float32)]
    stream = open_stream(FakeModel(), frames, Cadence(), realtime=False)
    got = []
    with pytest.raises(FlashVLError, match=r"frame 2: expected uint8 pixels, got float32"):
        for e in stream:
            got.append(e.caption.strip())
    assert got == ["gray 10", "gray 20"]


def test_a_model_error_reaches_the_consumer():
    class Broken(FakeModel):
        def encode(self, prepared):
            raise RuntimeError("vision graph exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        events_of(open_stream(Broken(), gray_frames([1, 2]), Cadence(), realtime=False))


def test_pieces_stream_the_text_before_the_event():
    with open_stream(FakeModel(), gray_frames([7, 9]), Cadence(), realtime=False, pieces=True) as stream:
        items = list(stream)
    kinds = [type(i).__name__ for i in items]
    assert kinds == ["CaptionPiece", "CaptionPiece", "CaptionEvent"] * 2
    assert "".join(i.text for i in items[:2]) == items[2].caption and isinstance(items[0], CaptionPiece)


@pytest.mark.parametrize("kwargs, needle", [({"interval": -1}, "--interval must be 0 or more"),
                                            ({"interval": float("nan")}, "interval must be a finite number, got nan"),
                                            ({"min_change": 0}, "--min-change must be in (0, 1]"),
                                            ({"min_change": 1.5}, "--min-change")])
def test_cadence_refuses_bad_values(kwargs, needle):
    with pytest.raises(FlashVLError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        Cadence(**kwargs)


def test_jsonl_record_schema():
    events = events_of(open_stream(FakeModel(), [(f, 0.5) for f in gray_frames([3])], Cadence(min_change=0.1),
                                   realtime=False))
    rec = events[0].as_json()
    assert rec == {"v": 1, "stream": "frames0", "id": 1, "repeat": False, "frame": 0,
                   "capture_ts": rec["capture_ts"], "media_s": 0.5, "caption": "gray 3 ", "tokens": 2,
                   "finish_reason": "stop", "preprocess_ms": 0.5, "vision_ms": 1.0, "prefill_ms": 1.0,
                   "decode_ms": 2.0, "latency_ms": rec["latency_ms"], "dropped": 0, "change": None}
    assert abs(rec["capture_ts"] - time.time()) < 60 and rec["latency_ms"] >= 0


# ----------------------------------------------------------------------------- ONNX Runtime cancel


def test_onnxruntime_call_in_flight_stops_when_cancelled(tmp_path):
    pytest.importorskip("onnx")
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from runtime.ort_backend import Interruptible

    n, nodes, prev = 1024, [], "x"
    for i in range(60):  # ~60 MatMuls of 1024^2: seconds on 2 cores
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"y{i}"]))
        prev = f"y{i}"
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", 1, [n, n])],
                              [helper.make_tensor_value_info(prev, 1, [n, n])],
                              [numpy_helper.from_array(np.eye(n, dtype=np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.ones((n, n), np.float32)
    runner = Interruptible()
    t0 = time.perf_counter()
    runner.guarded(lambda o: sess.run(None, {"x": x}, o))
    full = time.perf_counter() - t0

    threading.Timer(0.1, runner.cancel).start()
    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        runner.guarded(lambda o: sess.run(None, {"x": x}, o))
    assert time.perf_counter() - t0 < max(0.5, full / 2)
    with pytest.raises(Cancelled):  # stays cancelled until resumed
        runner.guarded(lambda o: sess.run(None, {"x": x}, o))
    runner.resume()
    assert np.array_equal(runner.guarded(lambda o: sess.run(None, {"x": x}, o))[0], x)


# ----------------------------------------------------------------------------- the tiny engine


@pytest.mark.parametrize("engine", ["tiny_engine", "tiny_dynamic_engine"])
def test_stream_captions_equal_generate_on_the_same_frames(engine, request, test_images):
    """The overlapped pipeline (prepare+encode on a worker, describe on the model thread) says exactly
    what generate() says for each frame."""
    import cv2

    from runtime import FlashVL

    vl = FlashVL.load(request.getfixturevalue(engine))
    base = cv2.imread(str(test_images["scene"]))
    frames = [np.roll(base, 7 * i, axis=1) for i in range(5)]
    prompt = PromptConfig("Describe the image.", max_new_tokens=12)
    events = events_of(vl.captions(frames, prompt, realtime=False))
    want = [vl.generate(f, "Describe the image.", max_new_tokens=12) for f in frames]
    assert [e.caption for e in events] == [w.text for w in want]
    assert [e.tokens for e in events] == [len(w.token_ids) for w in want]
    assert all(e.vision_ms > 0 and e.prefill_ms > 0 for e in events)


def test_frame_feed_with_the_tiny_engine(tiny_engine, test_images):
    import cv2

    from runtime import FlashVL

    vl = FlashVL.load(tiny_engine)
    frame = cv2.imread(str(test_images["scene"]))
    feed = FrameFeed(lossless=True)
    stream = vl.captions(feed, PromptConfig(max_new_tokens=6))
    pusher = threading.Thread(target=lambda: ([feed.push(frame, timestamp=i) for i in range(3)], feed.close()))
    pusher.start()
    events = events_of(stream)
    pusher.join()
    assert [e.media_s for e in events] == [0.0, 1.0, 2.0]
    assert len({e.caption for e in events}) == 1
    assert events[0].caption == vl.generate(frame, "Describe the image.", max_new_tokens=6).text
    with pytest.raises(FlashVLError, match="FrameFeed.push: expected an H x W x 3 BGR frame"):
        feed.push(np.zeros((4, 4, 2), np.uint8))


def test_a_failing_thread_setup_ends_the_stream_with_its_error():
    class NoGpu(FakeModel):
        def enter_thread(self):
            raise RuntimeError("cudaSetDevice failed")

    stream = open_stream(NoGpu(), gray_frames(range(100)), Cadence(), realtime=False)
    with pytest.raises(RuntimeError, match="cudaSetDevice"):
        list(stream)
    assert stream.done and stream.capture.stop.is_set()


def test_nothing_of_the_loop_runs_after_stop_returns():
    """stop() while caption N is described and frame N+1 is being encoded beside it: when stop() returns,
    no call of the loop is left running, and the model is handed back (resumed) exactly once."""
    model = FakeModel(encode_s=0.4, describe_s=5)
    stream = open_stream(model, gray_frames(range(10)), Cadence(overlap=True), realtime=False)
    deadline = time.perf_counter() + 10
    while model.started.count("encode") < 2 and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert model.started.count("encode") == 2  # frame 2's encode runs beside frame 1's caption
    stream.stop()
    started = len(model.started)
    time.sleep(0.6)
    assert len(model.started) == started and model.resumed == 1
    assert not any(t.name.startswith(("flashvl-model", "flashvl-prepare")) for t in threading.enumerate())


def test_a_model_error_stops_capture_and_a_lossless_feed_does_not_block():
    class Broken(FakeModel):
        def encode(self, prepared):
            raise RuntimeError("vision graph exploded")

    feed = FrameFeed(lossless=True)
    stream = open_stream(Broken(), feed, Cadence(), realtime=False)
    feed.push(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(RuntimeError, match="exploded"):
        list(stream)
    pusher = threading.Thread(target=lambda: [feed.push(np.zeros((8, 8, 3), np.uint8)) for _ in range(3)])
    pusher.start()
    pusher.join(2)
    assert not pusher.is_alive(), "push() blocked on a loop that had ended"
