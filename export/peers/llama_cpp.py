"""The llama.cpp peer: `python -m export.peers.llama_cpp` (a worker; see runtime.bench.workload).

    --prepare  the engine's decoder as one GGUF, written by the gguf package from the same weights
               (export.peers.gguf_file), at llama.cpp's type for the engine's decoder precision:
               fp32 -> F32, fp16 -> F16, int8 -> Q8_0, int4 -> Q4_0
    measure    llama.cpp through llama-cpp-python's bindings of its C API (no sampler, no Python wrapper):
               clear the KV cache; llama_decode(the N prompt ids, one batch) -> prefill ms, argmax of its
               logits = token 1; then M-1 steps of llama_decode(1 id) -> argmax -> decode tokens/s
Decode tokens/s counts the steps after the first token, as runtime.generate does.  Host overhead per
step = the step's wall time (ids in, argmax out) minus the time inside llama_decode.  The context is
llama.cpp's default otherwise (f16 KV cache, flash attention "auto", memory-mapped weights).
Decoder only: no vision or TTFT figure.
"""

from __future__ import annotations

import ctypes
import importlib
import sys
import time
from pathlib import Path

import numpy as np

from export.peers.gguf_file import cached_gguf, gguf_path
from runtime.bench.workload import Report, Workload, bench_prompts, files_bytes, peak_rss_bytes, worker_main
from runtime.errors import FlashVLError
from runtime.manifest import load_manifest

# the engine's decoder precision -> llama.cpp's type for the GGUF
PRECISIONS = {"fp32": "F32", "fp16": "F16", "int8": "Q8_0", "int4": "Q4_0"}
NOT_INSTALLED = "llama-cpp-python is not installed (pip install llama-cpp-python)"


def installed() -> bool:
    try:
        importlib.import_module("llama_cpp")  # not find_spec: the import also loads libllama
    except ImportError:
        return False
    return True


GGML_LOG_WARN, GGML_LOG_CONT = 3, 5  # ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
_log_callback = None  # kept alive: llama.cpp holds only the C pointer


def _warnings_only(llama_cpp) -> None:
    """Pass llama.cpp's warnings and errors to stderr, not its ~150-line load log.  (llama-cpp-python's own
    filter, _logger, maps ggml's levels shifted by one: with it set to ERROR, errors are the lines it hides.)"""
    global _log_callback
    if _log_callback is not None:
        return
    shown = [False]  # a CONT piece continues the last line's level

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data) -> None:
        if level != GGML_LOG_CONT:
            shown[0] = level >= GGML_LOG_WARN
        if shown[0]:
            sys.stderr.write(text.decode("utf-8", "replace"))

    _log_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


class LlamaCpp:
    """One GGUF model and one llama.cpp context: `decode(ids)` appends ids to the KV cache, `logits()` reads
    the last id's logits.  The ids buffer is allocated once, at n_ctx.

    fp32_attention: an F32 KV cache and no flash attention, for parity tests.  llama.cpp's default (f16 KV
    cache, flash attention "auto", which the CPU backend turns on) rounds attention through f16: on the
    tiny test model its logits differ from fp32 by ~1e-3 relative, against ~1e-6 with this set."""

    def __init__(self, path: Path, n_ctx: int, n_batch: int, threads: int, fp32_attention: bool = False,
                 n_seq_max: int = 1, n_ubatch: int | None = None):
        import llama_cpp

        self.lib = llama_cpp
        _warnings_only(llama_cpp)
        llama_cpp.llama_backend_init()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
        if not self.model:
            raise FlashVLError(f"{path}: llama.cpp could not load this GGUF (its log is above); delete it and run "
                               f"this worker with --prepare to write it again")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_batch  # the whole prompt in one llama_decode, one graph
        if n_ubatch is not None:  # the batched peer: llama.cpp splits a call into graphs of n_ubatch tokens
            params.n_ubatch = n_ubatch
        params.n_seq_max = n_seq_max  # sequences the cache holds (export.peers.llama_cpp_batched)
        params.n_threads = params.n_threads_batch = threads
        if fp32_attention:
            params.type_k = params.type_v = llama_cpp.GGML_TYPE_F32
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise FlashVLError(f"{path}: llama.cpp could not make a context of {n_ctx} tokens (its log is above)")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self._ids = np.zeros(n_ctx, np.int32)  # [n_ctx] the ids of one llama_decode call
        self._ids_ptr = self._ids.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token))

    def reset(self) -> None:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)

    def decode(self, ids) -> float:
        """Append ids at the next positions -> seconds inside llama_decode (logits of the last id only)."""
        n = len(ids)
        self._ids[:n] = ids
        batch = self.lib.llama_batch_get_one(self._ids_ptr, n)  # positions follow the cache; last id's logits
        t0 = time.perf_counter()
        rc = self.lib.llama_decode(self.ctx, batch)
        self.lib.llama_synchronize(self.ctx)
        inside = time.perf_counter() - t0
        if rc != 0:
            raise FlashVLError(f"llama_decode of {n} ids returned {rc} (1: no room in a context of "
                               f"{len(self._ids)} tokens; negative: an error, logged above)")
        return inside

    def logits(self) -> np.ndarray:
        """The last decoded id's logits, a view of llama.cpp's buffer (valid until the next decode).  [V] f32"""
        ptr = self.lib.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def close(self) -> None:
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)


def decode_round(llm: LlamaCpp, ids: np.ndarray, new_tokens: int) -> tuple[dict, list[int]]:
    """Prefill `ids`, then greedy steps to `new_tokens` ids (no stop token) -> (figures, the ids)."""
    llm.reset()
    t0 = time.perf_counter()
    llm.decode(ids)  # [N] -> the cache, logits of id N
    prefill_ms = (time.perf_counter() - t0) * 1e3
    out = [int(np.argmax(llm.logits()))]
    step_s = inside_s = 0.0
    while len(out) < new_tokens:
        t0 = time.perf_counter()
        inside_s += llm.decode(out[-1:])
        out.append(int(np.argmax(llm.logits())))  # argmax: the lowest id on ties, as runtime.sampling
        step_s += time.perf_counter() - t0
    steps = new_tokens - 1
    return {"prefill_ms": prefill_ms, "decode_tokens_per_s": steps / step_s,
            "host_overhead_ms": (step_s - inside_s) * 1e3 / steps}, out


def weights_bytes(path: Path) -> int:
    """Bytes of tensor data in a GGUF (the file less its header, metadata and alignment padding)."""
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors)


def measure(engine: Path, work: Workload, cache: Path) -> Report:
    import llama_cpp

    manifest = load_manifest(engine)
    precision = PRECISIONS[manifest.graphs.decoder.precision]
    path = cached_gguf(cache, manifest, precision)
    if not path.is_file():
        raise FlashVLError(f"{path}: no GGUF; run this worker with --prepare first")
    report = Report(system="llama.cpp", label=f"llama.cpp {precision}", precision=precision,
                    version=llama_cpp.__version__)
    ids, _ = bench_prompts(engine, manifest, work.prompt_tokens)
    llm = LlamaCpp(path, n_ctx=work.prompt_tokens + work.new_tokens, n_batch=work.prompt_tokens,
                   threads=work.threads)
    if llm.n_vocab != manifest.decoder.vocab_size:
        raise FlashVLError(f"{path}: llama.cpp sees {llm.n_vocab} tokens, the engine's decoder has "
                           f"{manifest.decoder.vocab_size}; delete the file and run --prepare again")
    print(f"llama.cpp: llama-cpp-python {llama_cpp.__version__}, {work.threads} threads, {precision}",
          file=sys.stderr, flush=True)
    for i in range(work.runs + 1):  # round 0 warms up
        figures, tokens = decode_round(llm, ids, work.new_tokens)
        if i:
            report.rounds.append(figures)
            report.token_ids = tokens
        print(f"llama.cpp {'round ' + str(i) if i else 'warm-up'}: " +
              ", ".join(f"{k} {v:.1f}" for k, v in figures.items()), file=sys.stderr, flush=True)
    llm.close()
    report.files_bytes = files_bytes([path])
    report.weights_bytes = weights_bytes(path)
    embed = "Q8_0 (llama-quantize's Q6_K for this tied table; gguf-py has no Q6_K)" if precision == "Q4_0" else precision
    report.notes.append(f"one {precision} GGUF written by gguf-py {_gguf_version()} from the same weights: "
                        f"norms and biases F32, token_embd {embed}; llama.cpp's CPU defaults: f16 KV cache, "
                        f"flash attention")
    report.peak_rss_bytes = peak_rss_bytes()
    return report


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


def skip(args) -> Report | None:
    if installed():
        return None
    precision = PRECISIONS[load_manifest(args.engine).graphs.decoder.precision]
    return Report(system="llama.cpp", label=f"llama.cpp {precision}", precision=precision, skipped=NOT_INSTALLED)


def prepare(engine: Path, cache: Path) -> None:
    gguf_path(engine, cache, PRECISIONS[load_manifest(engine).graphs.decoder.precision])


def main(argv=None) -> int:
    return worker_main("python -m export.peers.llama_cpp", __doc__, measure, prepare=prepare, skip=skip, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
