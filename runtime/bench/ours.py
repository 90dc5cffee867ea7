"""This runtime's side of the benchmark: `python -m runtime.bench.ours` (a worker; see runtime.bench.workload).

Each round, through the runtime's own parts (the API's image path, the embedding table, the decode loop):
    vision   the 512x512 bench image: prepare + vision graph            -> ms per tile
    TTFT     the image + 30 text ids -> prepare, vision, prefill, argmax  -> ms to the first token
    decoder  N prompt ids -> prefill, then M greedy steps, no stop token  -> prefill ms, tokens/s, host overhead
Host overhead per decode step = the step's wall time (runtime.generate's clock) minus the time inside the
engine's own calls (the backend's `engine_seconds`): embedding lookup, binding, sampling, Python.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from runtime.bench.workload import (Report, Workload, bench_image, bench_prompts, files_bytes, peak_rss_bytes,
                                    ttft_ids, worker_main)
from runtime.errors import FlashVLError
from runtime.generate import LoopState, Timings, decode_loop
from runtime.sampling import Sampler, SamplingConfig

GREEDY = SamplingConfig(temperature=0.0)


def image_round(vl, image: np.ndarray, text_ids: np.ndarray) -> dict:
    t0 = time.perf_counter()
    prepared = vl.prepare_image(image)  # [tiles, 3, S, S]
    enc = vl.encode_prepared(prepared)  # [1, image_tokens, D]
    ids = ttft_ids(vl.manifest.tokens, enc.embeds.shape[1], text_ids)  # [n + 2 + T]
    logits = vl.decoder.forward(vl.embed.prompt(ids, enc.embeds), 0)  # [1, V]
    int(np.argmax(logits[0]))
    ttft = (time.perf_counter() - t0) * 1e3
    return {"vision_ms_per_tile": enc.vision_ms / prepared.pixels.shape[0], "ttft_ms": ttft}


def decode_round(vl, ids: np.ndarray, new_tokens: int) -> tuple[dict, list[int]]:
    state = LoopState(timings=Timings(), t_start=time.perf_counter())
    dec = vl.decoder
    engine_at_first = None
    for token in decode_loop(dec, vl.embed, ids, None, Sampler(GREEDY), new_tokens, (), state):
        if engine_at_first is None:
            engine_at_first = dec.engine_seconds  # prefill done; the decode steps start here
    t = state.timings
    engine_ms = (dec.engine_seconds - engine_at_first) * 1e3
    return {"prefill_ms": t.prefill_ms, "decode_tokens_per_s": t.decode_tokens_per_s,
            "host_overhead_ms": (t.decode_ms - engine_ms) / t.decode_steps}, list(state.tokens)


def measure(engine, work: Workload) -> Report:
    from runtime.api import FlashVL

    vl = FlashVL.load(engine, threads=work.threads, backend="onnxruntime")  # the peers all run on the CPU
    m = vl.manifest
    g = m.graphs
    import onnxruntime

    report = Report(system="flash-vl", label=f"flash-vl {g.decoder.precision}", precision=g.decoder.precision,
                    version=f"onnxruntime {onnxruntime.__version__}")
    ids, text_ids = bench_prompts(engine, m, work.prompt_tokens)
    image = bench_image()
    if work.prompt_tokens + work.new_tokens > vl.decoder.max_seq_len:
        raise FlashVLError(f"--prompt-tokens {work.prompt_tokens} + --new-tokens {work.new_tokens} exceed the "
                           f"context window of {engine} ({vl.decoder.max_seq_len}); ask for fewer")
    print(f"flash-vl: {vl.backend.line()}", file=sys.stderr, flush=True)
    for i in range(work.runs + 1):  # round 0 warms up
        figures = image_round(vl, image, text_ids)
        decode, tokens = decode_round(vl, ids, work.new_tokens)
        figures.update(decode)
        if i:
            report.rounds.append(figures)
            report.token_ids = [int(x) for x in tokens]
        print(f"flash-vl {'round ' + str(i) if i else 'warm-up'}: " +
              ", ".join(f"{k} {v:.1f}" for k, v in figures.items()), file=sys.stderr, flush=True)
    loaded = [g.vision.file, g.decoder.file]
    weights = [engine / f.path for f in m.files if any(f.path == x or f.path.startswith(x + ".") for x in loaded)]
    report.weights_bytes = files_bytes(weights)
    report.files_bytes = files_bytes(engine / f.path for f in m.files)
    report.notes.append(f"{g.vision.precision} vision, {g.decoder.precision} decoder"
                        + (f" ({g.decoder.flavour} flavour, block {g.decoder.weights.block_size}"
                           f"{', lm_head quantized' if g.decoder.weights.lm_head else ''})" if g.decoder.weights else ""))
    report.peak_rss_bytes = peak_rss_bytes()
    vl.close()
    return report


def main(argv=None) -> int:
    return worker_main("python -m runtime.bench.ours", __doc__, lambda engine, work, cache: measure(engine, work),
                       argv=argv)


if __name__ == "__main__":
    sys.exit(main())
