"""The PyTorch reference peer: `python -m export.peers.torch_eager` (a worker; see runtime.bench.workload).

    decoder  transformers' Qwen2ForCausalLM, eager PyTorch with its DynamicCache, loaded from the
             checkpoint export.peers.weights writes from the engine's weights (--prepare)
    vision   our PyTorch vision tower + adapter (export.model.VisionGraph; parity with transformers'
             SiglipVisionModel / Aimv2VisionModel is tested) on the runtime's own preprocessing
Same dtype as the engine's decoder where PyTorch has one on the CPU: fp32, or fp16 for an fp16 engine;
an int8/int4 engine is compared with fp32 (eager PyTorch has no int4/int8 weight-only CPU path).
Host overhead is not separated: everything in a PyTorch step is the framework's.
"""

from __future__ import annotations

import gc
import sys
import time

import torch

from export.peers.weights import hf_checkpoint
from runtime.api import vision_pixels
from runtime.bench.workload import (Report, Workload, bench_image, bench_prompts, peak_rss_bytes, ttft_ids,
                                    worker_main)
from runtime.image import load_image
from runtime.manifest import load_manifest
from runtime.tiling import gather_tokens


@torch.no_grad()
def prefill(llm, embeds: torch.Tensor):
    """[1, S, D] -> (next id, the cache)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    out = llm(inputs_embeds=embeds, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return int(torch.argmax(out.logits[0, -1])), out.past_key_values


@torch.no_grad()
def decode(llm, first: int, cache, steps: int) -> tuple[list[int], float]:
    """steps - 1 greedy steps after the first token -> (ids, seconds)."""
    ids = [first]
    t0 = time.perf_counter()
    for _ in range(steps - 1):
        out = llm(input_ids=torch.tensor([[ids[-1]]]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        ids.append(int(torch.argmax(out.logits[0, -1])))
    return ids, time.perf_counter() - t0


def measure(engine, work: Workload, cache_root) -> Report:
    from transformers import Qwen2ForCausalLM

    from export.reference import rebuild

    manifest = load_manifest(engine)
    precision = manifest.graphs.decoder.precision
    dtype = torch.float16 if precision == "fp16" else torch.float32
    name = str(dtype).removeprefix("torch.").replace("float", "fp")
    report = Report(system="torch", label=f"PyTorch eager {name}", precision=name,
                    version=f"torch {torch.__version__}")
    if precision in ("int8", "int4"):
        report.notes.append(f"fp32: eager PyTorch has no {precision} weight-only CPU path")
    torch.set_num_threads(work.threads)
    hf = hf_checkpoint(engine, cache_root)
    model = rebuild(manifest)
    vision = model.vision_graph.to(dtype).eval()
    del model
    gc.collect()
    llm = Qwen2ForCausalLM.from_pretrained(hf, dtype=dtype).eval()
    embed = llm.get_input_embeddings()
    tokens = manifest.tokens
    prompt, text_ids = bench_prompts(engine, manifest, work.prompt_tokens)
    ids = torch.from_numpy(prompt)[None]  # [1, N]
    image = bench_image()
    print(f"torch: {torch.__version__}, {work.threads} threads, {name}", file=sys.stderr, flush=True)
    for i in range(work.runs + 1):  # round 0 warms up
        figures = {}
        t0 = time.perf_counter()
        rgb = load_image(image, background=manifest.preprocess.alpha_background)  # [H, W, 3]
        pixels, layout = vision_pixels(rgb, manifest)  # [tiles, 3, S, S] (1 tile for a static model)
        tv = time.perf_counter()
        with torch.no_grad():
            img = vision(torch.from_numpy(pixels).to(dtype))  # [tiles, n*n, D]
        figures["vision_ms_per_tile"] = (time.perf_counter() - tv) * 1e3 / pixels.shape[0]
        if layout is not None:
            img = torch.from_numpy(gather_tokens(img.float().numpy(), layout)).to(dtype)[None]  # [1, image_tokens, D]
        n = img.shape[1]
        row = ttft_ids(tokens, n, text_ids)  # [n + 2 + T]
        with torch.no_grad():
            x = embed(torch.from_numpy(row)[None])  # [1, n + 2 + T, D]
            x[0, 1:1 + n] = img[0]
        prefill(llm, x)
        figures["ttft_ms"] = (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        with torch.no_grad():
            first, kv = prefill(llm, embed(ids))
        figures["prefill_ms"] = (time.perf_counter() - t0) * 1e3
        out, seconds = decode(llm, first, kv, work.new_tokens)
        figures["decode_tokens_per_s"] = (work.new_tokens - 1) / seconds
        if i:
            report.rounds.append(figures)
            report.token_ids = out
        print(f"torch {'round ' + str(i) if i else 'warm-up'}: " +
              ", ".join(f"{k} {v:.1f}" for k, v in figures.items()), file=sys.stderr, flush=True)
    size = torch.finfo(dtype).bits // 8
    report.weights_bytes = size * (sum(p.numel() for p in llm.parameters()) + sum(p.numel() for p in vision.parameters()))
    report.files_bytes = sum(f.stat().st_size for f in hf.glob("*.safetensors"))
    report.notes.append("transformers Qwen2ForCausalLM + our PyTorch vision graph; peak RSS includes "
                        "rebuilding the model from the manifest's weight source")
    report.peak_rss_bytes = peak_rss_bytes()
    return report


def main(argv=None) -> int:
    return worker_main("python -m export.peers.torch_eager", __doc__, measure, prepare=hf_checkpoint, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
