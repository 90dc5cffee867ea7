"""The llama.cpp peer with continuous batching: `python -m export.peers.llama_cpp_batched` (a levels worker;
see runtime.bench.levels for the figures and how they are defined).

    --prepare  the same GGUF as export.peers.llama_cpp (the same cache file: written once for both)
    measure    llama.cpp through llama-cpp-python's bindings of its C API, scheduled as llama.cpp's own
               server schedules its slots: one context with n_seq_max = N, and each step one llama_decode
               whose llama_batch carries
                   the next token of every sequence that is generating (seq_id = its slot), then
                   prompt ids of the sequences still in their prefill, in order, up to n_batch ids in all
                   (logits only for a prompt's last id: its first token)
               greedy (argmax of each sequence's logits), no stop token, until every sequence has M ids.
Sequence i's prompt is prompt_ids(--prompt-tokens, seed=i) (sequence 0's is the single-request bench's).
Text only: llama.cpp has no vision tower for this model, so its TTFT is queueing + a text prefill of the
same length, where this runtime's also encodes the 512x512 image.
    alone    prompts 0..max(levels)-1, each alone in a one-sequence context: the greedy ids it gets alone
    level N  a context of N sequences (n_ctx = N x (P + M)); one warm-up round, then --runs rounds
Context: llama.cpp's defaults otherwise, as the server's (n_batch 2048, n_ubatch 512, f16 KV cache, flash
attention "auto", a KV cache per sequence: kv_unified off).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from export.peers.gguf_file import cached_gguf
from export.peers.llama_cpp import PRECISIONS, LlamaCpp, installed, prepare
from runtime.bench.levels import LevelsReport, levels_worker_main, request_record, round_figures
from runtime.bench.workload import Workload, ordinary_ids, peak_rss_bytes, prompt_ids
from runtime.errors import FlashVLError
from runtime.manifest import load_manifest

N_BATCH, N_UBATCH = 2048, 512  # llama.cpp's defaults (common/common.h), as llama-server runs
CTX_PAD = 256


class Slots:
    """One llama.cpp context of n_seq sequences and one llama_batch, allocated once at n_batch ids."""

    def __init__(self, path: Path, n_seq: int, seq_len: int, threads: int):
        n_ctx = n_seq * -(-seq_len // CTX_PAD) * CTX_PAD  # llama.cpp pads a context to 256 cells and then
        #                                                 splits it evenly between the sequences
        self.n_batch = min(N_BATCH, n_ctx)
        self.llm = LlamaCpp(path, n_ctx=n_ctx, n_batch=self.n_batch, threads=threads, n_seq_max=n_seq,
                            n_ubatch=min(N_UBATCH, self.n_batch))
        self.lib = self.llm.lib
        self.batch = self.lib.llama_batch_init(self.n_batch, 0, 1)  # token ids, one seq_id per entry

    def clear(self) -> None:
        self.llm.reset()

    def put(self, j: int, token: int, pos: int, seq: int, logits: bool) -> None:
        b = self.batch
        b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = token, pos, 1, logits
        b.seq_id[j][0] = seq

    def decode(self, n: int) -> None:
        self.batch.n_tokens = n
        rc = self.lib.llama_decode(self.llm.ctx, self.batch)
        if rc != 0:
            raise FlashVLError(f"llama_decode of a batch of {n} ids returned {rc} (1: no room in the KV cache; "
                               f"negative: an error, logged above)")

    def argmax(self, j: int) -> int:
        """Greedy id from the logits of batch entry j (the lowest id on ties, as runtime.sampling)."""
        ptr = self.lib.llama_get_logits_ith(self.llm.ctx, j)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab,))))

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.llm.close()


def serve(slots: Slots, prompts: list[np.ndarray], new_tokens: int) -> tuple[list[dict], list[list[int]], tuple]:
    """All prompts submitted at t = 0; steps until each has new_tokens ids -> (request records, their ids)."""
    slots.clear()
    n = len(prompts)
    fed = [0] * n  # prompt ids in the cache, per sequence
    out: list[list[int]] = [[] for _ in range(n)]
    first, last = [0.0] * n, [0.0] * n
    full_steps, full_seconds = 0, 0.0  # steps carrying all n generating sequences and no prompt ids
    t0 = time.perf_counter()
    while any(len(o) < new_tokens for o in out):
        entries = []  # (batch index, sequence) whose logits this step reads
        j = 0
        for s in range(n):  # 1. the next token of every generating sequence
            if out[s] and len(out[s]) < new_tokens:
                slots.put(j, out[s][-1], len(prompts[s]) + len(out[s]) - 1, s, True)
                entries.append((j, s))
                j += 1
        for s in range(n):  # 2. prompt ids of sequences in their prefill, up to n_batch in all
            take = min(len(prompts[s]) - fed[s], slots.n_batch - j)
            for k in range(fed[s], fed[s] + take):
                slots.put(j, int(prompts[s][k]), k, s, k == len(prompts[s]) - 1)
                j += 1
            fed[s] += take
            if take and fed[s] == len(prompts[s]):
                entries.append((j - 1, s))
        t_step = time.perf_counter()
        slots.decode(j)
        if j == n and len(entries) == n and all(len(out[s]) >= 1 for s in range(n)):
            full_steps += 1
            full_seconds += time.perf_counter() - t_step
        for idx, s in entries:
            out[s].append(slots.argmax(idx))
        now = time.perf_counter() - t0
        for _, s in entries:
            if len(out[s]) == 1:
                first[s] = now
            if len(out[s]) == new_tokens:
                last[s] = now
    records = [request_record(first_s=first[s], last_s=last[s], tokens=len(out[s]), decode_steps=len(out[s]) - 1,
                              ids_equal_alone=False, prompt=s, token_ids=out[s], finish_reason="length")
               for s in range(n)]
    return records, out, (full_steps, full_seconds)


def measure(engine: Path, work: Workload, levels: tuple[int, ...], cache: Path) -> LevelsReport:
    import llama_cpp

    manifest = load_manifest(engine)
    precision = PRECISIONS[manifest.graphs.decoder.precision]
    path = cached_gguf(cache, manifest, precision)
    if not path.is_file():
        raise FlashVLError(f"{path}: no GGUF; run this worker with --prepare first")
    report = LevelsReport(system="llama.cpp", label=f"llama.cpp {precision}", precision=precision,
                          version=llama_cpp.__version__)
    vocab, avoid = ordinary_ids(engine, manifest)
    prompts = [prompt_ids(work.prompt_tokens, vocab, avoid, seed=i) for i in range(max(levels))]
    seq_len = work.prompt_tokens + work.new_tokens
    print(f"llama.cpp batched: llama-cpp-python {llama_cpp.__version__}, {work.threads} threads, {precision}",
          file=sys.stderr, flush=True)
    solo = Slots(path, 1, seq_len, work.threads)
    if solo.llm.n_vocab != manifest.decoder.vocab_size:
        raise FlashVLError(f"{path}: llama.cpp sees {solo.llm.n_vocab} tokens, the engine's decoder has "
                           f"{manifest.decoder.vocab_size}; delete the file and run --prepare again")
    serve(solo, prompts[:1], 2)  # warm-up
    alone = [serve(solo, [p], work.new_tokens)[1][0] for p in prompts]
    solo.close()
    for n in levels:
        slots = Slots(path, n, seq_len, work.threads)
        level = {"concurrency": n, "rounds": []}
        for i in range(work.runs + 1):  # round 0 warms up
            records, ids, full_batch = serve(slots, prompts[:n], work.new_tokens)
            for r, got, want in zip(records, ids, alone):
                r["ids_equal_alone"] = got == want
            figures = round_figures(records, full_batch)
            if i:
                level["rounds"].append(figures)
            print(f"llama.cpp N={n} {'round ' + str(i) if i else 'warm-up'}: "
                  f"aggregate decode {figures['aggregate_decode_tokens_per_s'] or 0:.1f} tok/s, "
                  f"total {figures['total_tokens_per_s'] or 0:.1f} tok/s, wall {figures['wall_s']:.2f} s",
                  file=sys.stderr, flush=True)
        slots.close()
        level["peak_rss_bytes"] = peak_rss_bytes()
        report.levels.append(level)
    report.notes.append(f"text only, {work.prompt_tokens} ids a prompt (no vision tower for this model in "
                        f"llama.cpp); one {precision} GGUF from the same weights; server-style batches: "
                        f"n_batch {N_BATCH}, n_ubatch {N_UBATCH}, f16 KV cache, flash attention")
    return report


def skip(args) -> LevelsReport | None:
    if installed():
        return None
    from export.peers.llama_cpp import NOT_INSTALLED

    precision = PRECISIONS[load_manifest(args.engine).graphs.decoder.precision]
    return LevelsReport(system="llama.cpp", label=f"llama.cpp {precision}", precision=precision, skipped=NOT_INSTALLED)


def main(argv=None) -> int:
    return levels_worker_main("python -m export.peers.llama_cpp_batched", __doc__, measure, prepare=prepare,
                              skip=skip, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
