"""The decoder weights an engine folder was exported from, for the benchmark's peers.

    engine/manifest.json --export.reference.rebuild--> the PyTorch model (same seed or checkpoint)
      -> decoder state dict under transformers' Qwen2ForCausalLM names ("model.layers.0.self_attn.q_proj.weight")
      -> hf_checkpoint(): config.json + model.safetensors + tokenizer.json, the input of ONNX Runtime
         GenAI's model builder; gguf_file() (export.peers.gguf_file) writes llama.cpp's format from the same dict

Converted models are cached under `cache/<key>/`, key = the manifest's preset and weight source,
so a second benchmark run on the same weights converts nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.manifest import DecoderSpec, Manifest, load_manifest

if TYPE_CHECKING:  # the measuring workers import this module; torch would only inflate their RSS
    import torch


def cache_dir(cache: Path, manifest: Manifest) -> Path:
    """cache/<preset>-<12 hex of the weight source>: one folder per set of weights."""
    src = json.dumps(asdict(manifest.source), sort_keys=True) if manifest.source else "none"
    key = hashlib.sha256(f"{manifest.preset}|{manifest.decoder.max_seq_len}|{src}".encode()).hexdigest()[:12]
    folder = cache / f"{manifest.preset}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def decoder_module(engine: Path, manifest: Manifest | None = None):
    """The PyTorch model (export.model.FlashVL, eval mode) on the engine's weights, and the manifest."""
    from export.reference import rebuild

    manifest = manifest or load_manifest(engine)
    return rebuild(manifest).eval(), manifest


def hf_state_dict(decoder) -> dict[str, "torch.Tensor"]:
    """Our decoder's parameters under Qwen2ForCausalLM's names (tied lm_head left out, as transformers saves it)."""
    sd = {"model." + k: v.detach() for k, v in decoder.state_dict().items()}
    if decoder.lm_head is not None:
        sd["lm_head.weight"] = sd.pop("model.lm_head.weight")
    return sd


def qwen2_config(spec: DecoderSpec, eos_id: int, bos_id: int | None = None) -> dict:
    """config.json of a transformers Qwen2ForCausalLM with this decoder's shapes."""
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "torch_dtype": "float32",
        "vocab_size": spec.vocab_size, "hidden_size": spec.dim, "intermediate_size": spec.hidden_dim,
        "num_hidden_layers": spec.n_layers, "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_kv_heads, "head_dim": spec.head_dim, "hidden_act": "silu",
        "rms_norm_eps": spec.norm_eps, "rope_theta": spec.rope_theta, "max_position_embeddings": spec.max_seq_len,
        "tie_word_embeddings": spec.tied_embeddings, "use_sliding_window": False, "attention_dropout": 0.0,
        "bos_token_id": eos_id if bos_id is None else bos_id, "eos_token_id": eos_id,
    }


def hf_checkpoint(engine: Path, cache: Path, progress=lambda msg: print(msg, file=sys.stderr, flush=True)) -> Path:
    """cache/<key>/hf: the engine's decoder as a transformers Qwen2 checkpoint (written once)."""
    from safetensors.torch import save_file

    manifest = load_manifest(engine)
    folder = cache_dir(cache, manifest) / "hf"
    if (folder / "done").is_file():
        return folder
    progress(f"writing the decoder as a transformers Qwen2 checkpoint in {folder}")
    model, _ = decoder_module(engine, manifest)
    tmp = folder.with_name("hf.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokens = manifest.tokens
    eos = tokens.stop_ids[0]
    (tmp / "config.json").write_text(json.dumps(qwen2_config(manifest.decoder, eos), indent=2) + "\n")
    (tmp / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "do_sample": False}) + "\n")
    state = {k: v.contiguous() for k, v in hf_state_dict(model.decoder).items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(engine / manifest.tokenizer, tmp / "tokenizer.json")
    (tmp / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                           "eos_token": None, "model_max_length":
                                                           manifest.decoder.max_seq_len}) + "\n")
    (tmp / "done").write_text("ok\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder
