"""The ONNX Runtime GenAI peer: `python -m export.peers.ortgenai` (a worker; see runtime.bench.workload).

    --prepare  the engine's decoder as a transformers checkpoint (export.peers.weights), then ONNX Runtime
               GenAI's own model builder on it, at the engine's decoder precision, for the CPU, with the
               builder's defaults (int4/int8: MatMulNBits, block 32, accuracy level 4, lm_head too)
    measure    og.Generator: append the N prompt ids (prefill), then M greedy steps (no stop before M:
               min_length masks its EOS id until then, which the other systems do not do, so where EOS
               is the top token the "greedy ids equal" column shows a difference that is not the weights';
               it accepts no EOS id outside the vocabulary to avoid that)
The builder runs offline (HF_HUB_OFFLINE, hf_token=false): it reads the local checkpoint only.
Decoder only: ONNX Runtime GenAI has no vision tower of this model, so no vision or TTFT figure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from export.peers.weights import cache_dir, hf_checkpoint
from runtime.bench.workload import Report, Workload, bench_prompts, files_bytes, peak_rss_bytes, worker_main
from runtime.errors import FlashVLError
from runtime.manifest import load_manifest

# the engine's decoder precision -> the builder's --precision on the CPU (it has no fp16 CPU model)
PRECISIONS = {"fp32": "fp32", "int8": "int8", "int4": "int4"}
NOT_INSTALLED = "onnxruntime-genai is not installed (pip install -e \".[bench]\")"


def installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime_genai") is not None


def model_dir(engine: Path, cache: Path) -> tuple[Path, str]:
    manifest = load_manifest(engine)
    precision = manifest.graphs.decoder.precision
    if precision not in PRECISIONS:
        raise FlashVLError(f"ONNX Runtime GenAI builds no {precision} model for the CPU (it builds "
                           f"{sorted(PRECISIONS)}); benchmark an fp32/int8/int4 engine against it")
    return cache_dir(cache, manifest) / f"ortgenai-{PRECISIONS[precision]}", PRECISIONS[precision]


def build(engine: Path, cache: Path) -> Path:
    """Run ONNX Runtime GenAI's model builder once per precision; return its output folder."""
    out, precision = model_dir(engine, cache)
    if (out / "genai_config.json").is_file():
        return out
    hf = hf_checkpoint(engine, cache)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"ortgenai: building a {precision} CPU model with its model builder in {out}", file=sys.stderr, flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(tmp),
                           "-p", precision, "-e", "cpu", "-c", str(tmp.with_name(tmp.name + ".hf-cache")),
                           "--extra_options", "hf_token=false"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FlashVLError(f"ONNX Runtime GenAI's model builder failed on {hf} ({tail[0]})")
    shutil.rmtree(tmp.with_name(tmp.name + ".hf-cache"), ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"ortgenai: built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return out


def decode_round(og, model, ids: np.ndarray, new_tokens: int) -> tuple[dict, list[int]]:
    params = og.GeneratorParams(model)
    total = len(ids) + new_tokens
    params.set_search_options(max_length=total, min_length=total, do_sample=False)  # min_length: no early EOS
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(ids.astype(np.int32))  # prefill; the first token's logits are ready
    t1 = time.perf_counter()
    out = []
    gen.generate_next_token()  # samples from the prefill's logits: the first token
    out.append(int(gen.get_next_tokens()[0]))
    t2 = time.perf_counter()
    while len(out) < new_tokens:
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    t3 = time.perf_counter()
    return {"prefill_ms": (t1 - t0) * 1e3, "decode_tokens_per_s": (new_tokens - 1) / (t3 - t2)}, out


def measure(engine: Path, work: Workload, cache: Path) -> Report:
    import onnxruntime_genai as og

    folder, precision = model_dir(engine, cache)
    if not (folder / "genai_config.json").is_file():
        raise FlashVLError(f"{folder}: no ONNX Runtime GenAI model; run this worker with --prepare first")
    manifest = load_manifest(engine)
    report = Report(system="ortgenai", label=f"ORT GenAI {precision}", precision=precision,
                    version=f"onnxruntime-genai {og.__version__}")
    config = og.Config(str(folder))
    config.clear_providers()  # the CPU
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": work.threads}}}}))
    model = og.Model(config)
    ids, _ = bench_prompts(engine, manifest, work.prompt_tokens)
    print(f"ortgenai: {og.__version__}, {work.threads} threads, {precision}", file=sys.stderr, flush=True)
    for i in range(work.runs + 1):  # round 0 warms up
        figures, tokens = decode_round(og, model, ids, work.new_tokens)
        if i:
            report.rounds.append(figures)
            report.token_ids = tokens
        print(f"ortgenai {'round ' + str(i) if i else 'warm-up'}: " +
              ", ".join(f"{k} {v:.1f}" for k, v in figures.items()), file=sys.stderr, flush=True)
    onnx_files = [p for p in folder.iterdir() if p.suffix in (".onnx", ".data")]
    report.files_bytes = files_bytes(onnx_files)
    report.weights_bytes = report.files_bytes
    report.notes.append("its own model builder's defaults" + (" (MatMulNBits block 32, accuracy level 4, lm_head "
                                                             "quantized)" if precision != "fp32" else ""))
    report.peak_rss_bytes = peak_rss_bytes()
    return report


def skip(args) -> Report | None:
    if not installed():
        return Report(system="ortgenai", label="ORT GenAI", precision="", skipped=NOT_INSTALLED)
    precision = load_manifest(args.engine).graphs.decoder.precision
    if precision not in PRECISIONS:
        return Report(system="ortgenai", label="ORT GenAI", precision=precision,
                      skipped=f"its builder makes no {precision} CPU model")
    return None


def main(argv=None) -> int:
    return worker_main("python -m export.peers.ortgenai", __doc__, measure, prepare=build, skip=skip, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
