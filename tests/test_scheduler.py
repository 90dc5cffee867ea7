"""One FlashVL, many callers: the engine loop batches them, and each gets exactly its own answer.

Every result is compared with the same request run alone (serially, on the same object), and the
concurrent static cases with the PyTorch reference itself.  Tiny preset, fp32, both decoder flavours and
the dynamic (tiled) model.  Threads are joined with a timeout; nothing is timed.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.extras import needs

needs("export")

from export.reference import run as reference_run
from runtime import FlashVL
from runtime.engine import Scheduler, Sequence
from runtime.engine.scheduler import Decode, Prefill
from runtime.errors import Cancelled, FlashVLError, QueueFull
from runtime.generate import Timings
from runtime.sampling import Sampler, SamplingConfig

JOIN_S = 120  # a generous bound on each thread of a test, never an assertion on speed


def run_threads(fns) -> list:
    """Run each fn on its own thread; return their results (or exceptions) in order."""
    out = [None] * len(fns)

    def call(i, fn):
        try:
            out[i] = fn()
        except BaseException as e:  # the test inspects it
            out[i] = e
    threads = [threading.Thread(target=call, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_S)
        assert not t.is_alive(), "a request never finished"
    return out


@pytest.fixture(scope="module", params=["standard", "fused", "dynamic"])
def engine(request, tiny_engine, tiny_fused_engine, tiny_dynamic_engine):
    return {"standard": tiny_engine, "fused": tiny_fused_engine, "dynamic": tiny_dynamic_engine}[request.param]


@pytest.fixture(scope="module")
def vl(engine):
    with FlashVL.load(engine, threads=1, prefill_chunk=16) as model:  # small chunks: prompts interleave
        yield model


def requests(test_images) -> list[tuple]:
    """(image, prompt, max_new_tokens): different images, prompt lengths, token budgets, text only."""
    imgs = ["scene", "wide_jpeg", "tall_small", None, "gray", "panorama", None, "portrait"]
    prompts = ["Describe the image.", "How many circles are there?", "What colour is the square?",
               "Write a haiku about shapes and colours in a long sentence, please.", "Hi", "Where?",
               "Two words.", "Describe the image in detail, please."]
    return [(None if i is None else test_images[i], p, 6 + 5 * k) for k, (i, p) in enumerate(zip(imgs, prompts))]


def test_concurrent_requests_equal_serial_and_reference(vl, engine, test_images):
    reqs = requests(test_images)
    serial = [vl.generate(img, p, max_new_tokens=n).token_ids for img, p, n in reqs]
    got = run_threads([lambda r=r: vl.generate(r[0], r[1], max_new_tokens=r[2]) for r in reqs])
    assert [g.token_ids for g in got] == serial
    assert sum(len(s) for s in serial) > 40 and len({tuple(s) for s in serial}) > 4
    if vl.manifest.tiling is None:  # the static model: against PyTorch too
        for (img, p, n), g in zip(reqs, got):
            assert g.token_ids == reference_run(engine, img, p, max_new_tokens=n, system=None)["token_ids"]
    assert not vl.engine.scheduler.busy and vl.engine.scheduler.slots.count(None) == vl.max_batch
    for g in got:  # a request's timings under load add up
        t = g.timings
        assert t.decode_steps == len(g.token_ids) - (g.finish_reason == "length")  # the stop token is not shown
        assert t.ttft_ms >= t.prefill_ms + t.queue_ms - 1e-6 and t.max_token_gap_ms * t.decode_steps >= t.decode_ms - 1e-6


def test_threads_times_requests_each_equal_its_serial_run(vl, test_images):
    reqs = requests(test_images)
    serial = {k: vl.generate(img, p, max_new_tokens=n).token_ids for k, (img, p, n) in enumerate(reqs)}

    def worker(t):
        return [(k, vl.generate(*reqs[k][:2], max_new_tokens=reqs[k][2]).token_ids)
                for k in ((t + m) % len(reqs) for m in range(4))]
    results = run_threads([lambda t=t: worker(t) for t in range(6)])
    pairs = [pair for r in results for pair in r]
    assert len(pairs) == 24
    assert all(ids == serial[k] for k, ids in pairs)


def slowed(vl, seconds: float):
    """Make every decode step of `vl` take at least `seconds` longer, so that a reader's actions land while
    the engine is mid-sequence (the tiny model decodes a token in well under a millisecond)."""
    decode = vl.decoder.decode
    vl.decoder.decode = lambda *a: (time.sleep(seconds), decode(*a))[1]
    return decode


def test_staggered_streams_with_cancellation(vl, test_images):
    """Streams start while others decode; one is cancelled mid-way, one stops its reader early; the others
    are unaffected and every slot is free at the end."""
    reqs = [(img, p, 24) for img, p, _ in requests(test_images)[:5]]
    serial = [vl.generate(img, p, max_new_tokens=n).token_ids for img, p, n in reqs]
    assert all(len(s) > 2 for s in serial), "needs answers of several tokens"
    gens = [vl.stream(img, p, max_new_tokens=n) for img, p, n in reqs]
    decode = slowed(vl, 0.01)
    try:
        pieces = [next(gens[0], ""), next(gens[1], "")]  # 1 joins while 0 decodes
        never = vl.stream(*reqs[2][:2], max_new_tokens=4)
        never.cancel()  # cancelled before it started: it never runs
        with pytest.raises(Cancelled):
            next(never)
        pieces.append(next(gens[2], ""))  # 2 joins, then is cancelled in flight
        gens[2].cancel()
        with pytest.raises(Cancelled):
            for _ in gens[2]:
                pass
        pieces.append(next(gens[3], ""))
        gens[3].close()  # 3's reader stops early: it is cancelled
        for g in (gens[0], gens[1], gens[4]):
            for _ in g:
                pass
    finally:
        vl.decoder.decode = decode
    assert [g.result.token_ids for g in (gens[0], gens[1], gens[4])] == [serial[0], serial[1], serial[4]]
    assert gens[2].result is None and gens[3].result is None
    deadline = time.monotonic() + 30
    while vl.engine.scheduler.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not vl.engine.scheduler.busy and vl.engine.scheduler.slots.count(None) == vl.max_batch
    assert vl.generate(*reqs[0][:2], max_new_tokens=reqs[0][2]).token_ids == serial[0]  # slots reusable


def test_sampling_settings_and_seeds_are_per_sequence(vl, test_images):
    img = test_images["scene"]
    cfgs = [SamplingConfig(temperature=1.0, top_k=50, seed=s) for s in (1, 2, 3)] + [None]
    serial = [vl.generate(img, "Describe the image.", max_new_tokens=12, sampling=c).token_ids for c in cfgs]
    got = run_threads([lambda c=c: vl.generate(img, "Describe the image.", max_new_tokens=12, sampling=c)
                       for c in cfgs])
    assert [g.token_ids for g in got] == serial
    assert len({tuple(s) for s in serial}) > 1


def test_cancel_all_and_resume(engine, test_images):
    with FlashVL.load(engine, threads=1) as vl:
        gen = vl.stream(test_images["scene"], "Describe the image.", max_new_tokens=200)
        next(gen)
        vl.cancel()
        with pytest.raises(Cancelled):
            for _ in gen:
                pass
        with pytest.raises(Cancelled, match="resume"):
            vl.generate(None, "Hi", max_new_tokens=3)
        vl.resume()
        assert vl.generate(None, "Hi", max_new_tokens=3).finish_reason in ("stop", "length")


def test_a_full_queue_is_an_error_not_a_hang(engine, test_images):
    with FlashVL.load(engine, threads=1, max_batch=1, max_queue=1) as vl:
        gate = threading.Event()  # holds the engine inside its first decoder call
        prefill = vl.decoder.prefill
        vl.decoder.prefill = lambda *a: (gate.wait(JOIN_S), prefill(*a))[1]
        first, second = (threading.Thread(target=vl.generate, args=(None, p), kwargs={"max_new_tokens": 4})
                         for p in ("Write a haiku.", "Hi"))
        first.start()
        deadline = time.monotonic() + 30
        while not vl.engine.scheduler.prefilling and time.monotonic() < deadline:
            time.sleep(0.005)
        second.start()  # waits for the slot
        while not vl.engine.scheduler.waiting and time.monotonic() < deadline:
            time.sleep(0.005)
        with pytest.raises(QueueFull, match="request queue full: 1 requests wait and 1 are being served"):
            vl.generate(None, "Hi", max_new_tokens=2)
        gate.set()
        for t in (first, second):
            t.join(JOIN_S)
        assert not vl.engine.scheduler.busy
        assert vl.generate(None, "Hi", max_new_tokens=2).token_ids  # and it serves again


def test_two_models_in_one_process_stay_independent(tiny_engine, tiny_dynamic_engine, test_images):
    img = test_images["wide_jpeg"]
    with FlashVL.load(tiny_engine, threads=1) as a, FlashVL.load(tiny_dynamic_engine, threads=1) as b:
        want = [m.generate(img, "Describe the image.", max_new_tokens=16).token_ids for m in (a, b) * 2]
        got = run_threads([lambda m=m: m.generate(img, "Describe the image.", max_new_tokens=16) for m in (a, b) * 2])
        assert [g.token_ids for g in got] == want
        assert a.engine is not b.engine and want[0] != want[1]


def test_closed_model_refuses_requests(tiny_engine):
    vl = FlashVL.load(tiny_engine, threads=1)
    vl.close()
    with pytest.raises(FlashVLError, match="closed"):
        vl.generate(None, "Hi", max_new_tokens=2)


def test_load_checks_the_engine_settings(tiny_engine):
    for kw, needle in (({"max_batch": 0}, "max_batch"), ({"max_queue": -1}, "max_queue"),
                       ({"prefill_chunk": 1.5}, "prefill_chunk"), ({"vision_batch": 0}, "vision_batch")):
        with pytest.raises(FlashVLError, match=needle):
            FlashVL.load(tiny_engine, **kw)
    with FlashVL.load(tiny_engine, max_batch=3) as vl:
        assert vl.max_batch == vl.engine.scheduler.max_batch == 3


# ----------------------------------------------------------------------------- the scheduler's policy


def seq(prompt_len: int) -> Sequence:
    return Sequence(np.zeros(prompt_len, np.int64), np.zeros((prompt_len, 4), np.float32),
                    Sampler(SamplingConfig()), 8, (), 64, Timings(), time.perf_counter())


def test_prefill_chunks_alternate_with_decode_steps():
    s = Scheduler(max_batch=2, max_queue=4, prefill_chunk=10)
    a, b, c = seq(25), seq(30), seq(5)
    for x in (a, b, c):
        s.add(x)
    step = s.schedule()
    assert isinstance(step, Prefill) and (step.seq, step.start, step.end) == (a, 0, 25)  # nobody decodes: whole
    a.pos = 25
    s.prefilled(a)
    steps = []
    for _ in range(7):
        step = s.schedule()
        steps.append(step)
        if isinstance(step, Prefill):
            step.seq.pos = step.end
            if step.end == step.seq.prompt_len:
                s.prefilled(step.seq)
    kinds = [(type(t).__name__, getattr(t, "end", None)) for t in steps]
    assert kinds == [("Decode", None), ("Prefill", 10), ("Decode", None), ("Prefill", 20), ("Decode", None),
                     ("Prefill", 30), ("Decode", None)]  # b in chunks between a's steps; c waits for a slot
    assert isinstance(steps[-1], Decode) and steps[-1].seqs == (a, b) and steps[-1].width == 2
    assert list(s.waiting) == [c] and (a.slot, b.slot) == (0, 1)
    s.release(a)
    s.schedule()
    assert c.slot == 0  # the lowest free slot
    assert s.queue_full() is False


def test_concurrent_images_share_vision_calls(engine, test_images):
    """With vision_batch=4, images that queue while the vision graph runs go in one call; each request's
    embeddings and answer are what it gets alone."""
    names = ["scene", "wide_jpeg", "gray", "portrait"]
    with FlashVL.load(engine, threads=1, vision_batch=4) as vl:
        alone = [vl.encode_image(test_images[n])[0] for n in names]
        answers = [vl.generate(test_images[n], "Describe the image.", max_new_tokens=12).token_ids for n in names]
        batcher = vl.vision_batcher
        gate, real = threading.Event(), batcher.vision

        class Gated:  # the first call waits until the other three images are queued behind it
            first = True

            def encode(self, pixels):
                if Gated.first:
                    Gated.first = False
                    gate.wait(JOIN_S)
                return real.encode(pixels)
        batcher.vision = Gated()
        calls = batcher.calls
        threads = [threading.Thread(target=lambda k=k: out.__setitem__(k, vl.encode_image(test_images[names[k]])[0]))
                   for k in range(4)]
        out = [None] * 4
        threads[0].start()
        deadline = time.monotonic() + 30
        while batcher.calls == calls and not batcher._busy and time.monotonic() < deadline:
            time.sleep(0.005)
        for t in threads[1:]:
            t.start()
        while len(batcher._pending) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        gate.set()
        for t in threads:
            t.join(JOIN_S)
        assert batcher.calls - calls == 2  # the first image alone, then the three that queued, together
        for got, want in zip(out, alone):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
        batcher.vision = real
        got = run_threads([lambda n=n: vl.generate(test_images[n], "Describe the image.", max_new_tokens=12)
                           for n in names])
        assert [g.token_ids for g in got] == answers


# ----------------------------------------------------------------------------- failures and misuse


def test_a_failing_decoder_call_fails_its_requests_and_the_engine_goes_on(tiny_fused_engine):
    from runtime.errors import EngineError

    with FlashVL.load(tiny_fused_engine, threads=1) as vl:
        want = vl.generate(None, "Hi", max_new_tokens=4).token_ids
        prefill, calls = vl.decoder.prefill, []

        def broken_once(*a):
            calls.append(1)
            if len(calls) == 1:
                raise EngineError("simulated device fault")
            return prefill(*a)
        vl.decoder.prefill = broken_once
        with pytest.raises(FlashVLError, match="the decoder call failed: simulated device fault"):
            vl.generate(None, "Hi", max_new_tokens=4)
        assert len(calls) == 1  # failed once, not retried forever
        assert vl.generate(None, "Hi", max_new_tokens=4).token_ids == want


def test_cancel_interrupts_the_call_in_flight(tiny_fused_engine):
    """A request whose prefill is running is cancelled: the call is interrupted (ONNX Runtime's terminate
    flag), the reader gets Cancelled, and the engine serves the next request."""
    with FlashVL.load(tiny_fused_engine, threads=1) as vl:
        gate, entered, outcomes = threading.Event(), threading.Event(), []
        prefill = vl.decoder.prefill

        def gated(*a):
            entered.set()
            gate.wait(JOIN_S)
            try:
                return prefill(*a)
            except Cancelled:
                outcomes.append("interrupted")
                raise
        vl.decoder.prefill = gated
        gen = vl.stream(None, "Write a haiku.", max_new_tokens=4)
        reader = threading.Thread(target=lambda: outcomes.append(run_threads([lambda: list(gen)])[0]))
        reader.start()
        assert entered.wait(JOIN_S)
        gen.cancel()  # the only sequence of the call in flight: the call itself is stopped
        gate.set()
        reader.join(JOIN_S)
        assert outcomes[0] == "interrupted" and isinstance(outcomes[1], Cancelled)
        vl.decoder.prefill = prefill
        assert vl.generate(None, "Hi", max_new_tokens=3).token_ids  # resumed


def test_max_queue_0_serves_a_burst_of_max_batch(tiny_fused_engine):
    with FlashVL.load(tiny_fused_engine, threads=1, max_batch=4, max_queue=0) as vl:
        got = run_threads([lambda: vl.generate(None, "Hi", max_new_tokens=3) for _ in range(4)])
        assert all(not isinstance(g, BaseException) for g in got), got


def test_a_dropped_stream_is_cancelled_at_once(tiny_fused_engine):
    with FlashVL.load(tiny_fused_engine, threads=1) as vl:
        decode = slowed(vl, 0.01)
        for _ in vl.stream(None, "Write a long story.", max_new_tokens=200):
            break  # the Generation is dropped here: no reference cycle keeps it alive
        deadline = time.monotonic() + 30
        while vl.engine.scheduler.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        vl.decoder.decode = decode
        assert not vl.engine.scheduler.busy


def test_one_generation_read_from_two_threads_is_a_clear_error(tiny_fused_engine):
    with FlashVL.load(tiny_fused_engine, threads=1) as vl:
        gate = threading.Event()
        decode = vl.decoder.decode
        vl.decoder.decode = lambda *a: (gate.wait(JOIN_S), decode(*a))[1]
        gen = vl.stream(None, "Write a haiku.", max_new_tokens=6)
        next(gen, None)  # the first token came from the prefill; the next waits for the gated step
        reader = threading.Thread(target=lambda: list(gen))
        reader.start()
        deadline = time.monotonic() + 30
        while not gen._reading.locked() and time.monotonic() < deadline:
            time.sleep(0.005)
        with pytest.raises(FlashVLError, match="being read by another thread"):
            next(gen)
        gate.set()
        reader.join(JOIN_S)
        assert gen.result is not None


def test_max_batch_above_the_export_is_refused(tiny_fused_engine):
    with pytest.raises(FlashVLError, match="max_batch 9 is above 8.*--max-batch 9"):
        FlashVL.load(tiny_fused_engine, max_batch=9)
