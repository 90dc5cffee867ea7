"""This runtime under concurrent requests: `python -m runtime.bench.concurrency` (a levels worker; see
runtime.bench.levels for the figures and how they are defined).

    python -m runtime.bench.concurrency --engine DIR --levels 1,2,4,8 --prompt-tokens 290 --new-tokens 32 \
        --runs 3 --threads 2 --cache DIR

One FlashVL (ONNX Runtime, --threads), loaded once; every request goes through its public API.  Request i
of a round is the 512x512 bench image with text prompt i (`fitted_prompt`: words drawn with seed i, then
digits, so that the whole prompt -- chat template, image tokens and text -- is exactly --prompt-tokens ids),
asking for --new-tokens, greedy.  Distinct prompts make a mix-up between the sequences of a batch visible.
    alone    prompts 0..max(levels)-1, one request at a time: the greedy ids each gets alone
    level N  one warm-up round, then --runs rounds: N threads wait at a barrier, then each calls
             vl.generate(image, prompt i, max_new_tokens=M) on the shared FlashVL
Each request's clock: submitted when its thread leaves the barrier; its last token when generate() returns
(less the final text flush, microseconds); its first token = the last less Timings.decode_ms (first token to
last, measured by the engine for that sequence).  TTFT is therefore queueing + image + prefill as the caller
sees them.  A request that meets a stop token before M ids is counted as what it generated (and noted).
"""

from __future__ import annotations

import sys
import threading
import time

from runtime.bench.levels import LevelsReport, levels_worker_main, request_record, round_figures
from runtime.bench.workload import IMAGE_SIZE, Workload, bench_image, peak_rss_bytes
from runtime.errors import FlashVLError
from runtime.tiling import plan

PROMPT_SEED_WORDS = ("the", "a", "small", "red", "house", "near", "river", "with", "two", "green", "trees", "and",
                     "blue", "car", "on", "road", "under", "bright", "sky", "people", "walk", "past", "old", "wall",
                     "dog", "runs", "across", "field", "while", "bird", "sits", "above", "door", "window", "light")


def image_tokens_of(manifest) -> int:
    """Image tokens of the bench image: the adapter's for a static model, the tile plan's for a dynamic one."""
    if manifest.tiling is None:
        return manifest.adapter.image_tokens
    return len(plan(IMAGE_SIZE, IMAGE_SIZE, manifest.tiling).tile_index)


def fitted_prompt(count, n: int, seed: int) -> str:
    """A text whose whole prompt is exactly n ids, where count(text) -> ids of the whole prompt (template and
    image included).  Words (seeded, so prompts differ) while they fit, then single digits, which the Qwen2
    split makes one id each."""
    import numpy as np

    words = np.random.default_rng(seed).permutation(PROMPT_SEED_WORDS)
    floor = count("0")
    if floor > n:
        raise FlashVLError(f"--prompt-tokens {n} is too few: the chat template and the 512x512 image already take "
                           f"{floor - 1}; ask for at least {floor}")
    text, i = "", 0
    while True:
        longer = f"{text} {words[i % len(words)]}".strip()
        if count(longer) > n - 1:  # keep room for at least one digit
            break
        text, i = longer, i + 1
    while count(text + "0") <= n and len(text) < 8 * n:  # digits straight after the last word: one id each
        text += str((len(text) * 7 + seed) % 10)
        if count(text) == n:
            return text
    raise FlashVLError(f"could not build a prompt of exactly {n} ids with this tokenizer (got {count(text)}); "
                       f"try another --prompt-tokens")


def request_prompts(tokenizer, manifest, n: int, prompt_tokens: int) -> list[str]:
    """Texts 0..n-1, each making a whole prompt of prompt_tokens ids with the bench image."""
    image_tokens = image_tokens_of(manifest)

    def count(text: str) -> int:
        return len(tokenizer.encode_prompt(text, image_tokens=image_tokens))

    return [fitted_prompt(count, prompt_tokens, seed) for seed in range(n)]


def check_prompt_tokens(engine, manifest, prompt_tokens: int) -> None:
    """Before any worker starts: the image and the chat template fit in --prompt-tokens (FlashVLError if not)."""
    from runtime.chat import ChatTokenizer

    tokenizer = ChatTokenizer.load(engine / manifest.tokenizer, manifest.tokens, manifest.chat,
                                   manifest.decoder.vocab_size)
    request_prompts(tokenizer, manifest, 1, prompt_tokens)


def one_round(vl, image, prompts: list[str], new_tokens: int, alone: list[list[int]]) -> dict:
    """len(prompts) requests submitted at once from as many threads -> round_figures."""
    n = len(prompts)
    barrier = threading.Barrier(n)
    out: list = [None] * n

    def request(i: int) -> None:
        try:
            barrier.wait()
            t_submit = time.perf_counter()
            result = vl.generate(image, prompts[i], max_new_tokens=new_tokens)
            out[i] = (t_submit, time.perf_counter(), result)
        except BaseException as e:  # re-raised on the measuring thread
            out[i] = e

    before = vl.engine.stats.decode_steps(n)  # (steps, seconds) of decode steps that carried n sequences
    threads = [threading.Thread(target=request, args=(i,), name=f"bench-request-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = vl.engine.stats.decode_steps(n)
    full_batch = (after[0] - before[0], after[1] - before[1])  # this round's steps that carried all n sequences
    failed = next((x for x in out if isinstance(x, BaseException)), None)
    if failed is not None:
        raise failed
    t0 = min(x[0] for x in out)
    requests = []
    for i, (t_submit, t_return, result) in enumerate(out):
        t = result.timings
        last = t_return - t0
        requests.append(request_record(
            first_s=max(t_submit - t0, last - t.decode_ms / 1e3), last_s=last, tokens=len(result.token_ids),
            decode_steps=t.decode_steps, ids_equal_alone=list(result.token_ids) == alone[i], prompt=i,
            token_ids=[int(x) for x in result.token_ids],
            finish_reason=result.finish_reason, submitted_s=t_submit - t0, vision_ms=t.vision_ms,
            prefill_ms=t.prefill_ms, queue_ms=t.queue_ms, api_ttft_ms=t.ttft_ms))
    return round_figures(requests, full_batch)


def measure(engine, work: Workload, levels: tuple[int, ...]) -> LevelsReport:
    from runtime.api import FlashVL

    vl = FlashVL.load(engine, threads=work.threads, backend="onnxruntime")  # the peer runs on the CPU too
    if work.prompt_tokens + work.new_tokens > vl.decoder.max_seq_len:
        raise FlashVLError(f"--prompt-tokens {work.prompt_tokens} + --new-tokens {work.new_tokens} exceed the "
                           f"context window of {engine} ({vl.decoder.max_seq_len}); ask for fewer")
    import onnxruntime

    g = vl.manifest.graphs
    report = LevelsReport(system="flash-vl", label=f"flash-vl {g.decoder.precision}", precision=g.decoder.precision,
                          version=f"onnxruntime {onnxruntime.__version__}")
    image = bench_image()
    prompts = request_prompts(vl.tokenizer, vl.manifest, max(levels), work.prompt_tokens)
    print(f"flash-vl: {vl.backend.line()}; {max(levels)} prompts of {work.prompt_tokens} ids", file=sys.stderr,
          flush=True)
    vl.generate(image, prompts[0], max_new_tokens=2)  # first-run allocations and page-ins
    alone = [list(vl.generate(image, p, max_new_tokens=work.new_tokens).token_ids) for p in prompts]
    early = 0
    for n in levels:
        level = {"concurrency": n, "rounds": []}
        for i in range(work.runs + 1):  # round 0 warms up
            figures = one_round(vl, image, prompts[:n], work.new_tokens, alone)
            if i:
                level["rounds"].append(figures)
                early += sum(r["finish_reason"] == "stop" for r in figures["requests"])
            print(f"flash-vl N={n} {'round ' + str(i) if i else 'warm-up'}: "
                  f"aggregate decode {figures['aggregate_decode_tokens_per_s'] or 0:.1f} tok/s, "
                  f"total {figures['total_tokens_per_s'] or 0:.1f} tok/s, wall {figures['wall_s']:.2f} s",
                  file=sys.stderr, flush=True)
        level["peak_rss_bytes"] = peak_rss_bytes()
        report.levels.append(level)
    report.notes.append(f"{g.vision.precision} vision, {g.decoder.precision} decoder ({g.decoder.flavour} flavour, "
                        f"max_batch {vl.max_batch})")
    if max(levels) > vl.max_batch:
        report.notes.append(f"above N = {vl.max_batch} requests wait for a slot (the decoder's max_batch; export "
                            f"with --max-batch for more)")
    if early:
        report.notes.append(f"{early} measured requests met a stop token before {work.new_tokens} ids")
    vl.close()
    return report


def main(argv=None) -> int:
    return levels_worker_main("python -m runtime.bench.concurrency", __doc__,
                              lambda engine, work, levels, cache: measure(engine, work, levels), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
