"""The engine's decoder as a GGUF file, llama.cpp's model format, written with the `gguf` package.

    Qwen2ForCausalLM state dict (export.peers.weights.hf_state_dict) + DecoderSpec
      -> GGUF v3, arch "qwen2": qwen2.* hyperparameters, a vocabulary, tensors under llama.cpp's names
         token_embd [V,D], blk.N.{attn_norm, attn_q(+bias), attn_k(+bias), attn_v(+bias), attn_output,
         ffn_norm, ffn_gate, ffn_up, ffn_down}, output_norm (output [V,D] only when untied)

Precision is llama.cpp's file type: "F32", "F16", "Q8_0" or "Q4_0".  Which tensors get it follows
llama.cpp's own tools (convert_hf_to_gguf.py for F32/F16/Q8_0, llama-quantize for Q4_0):
  * 1-D tensors (norms, biases) stay F32;
  * 2-D weights take the file type; a row length that is not a multiple of the quant block (32)
    falls back to F16, as the converter does;
  * the logits table -- output.weight, or token_embd.weight when the embeddings are tied -- keeps
    more bits under Q4_0: llama-quantize gives it Q6_K ("tensors shared with the output get the
    output's type").  gguf-py has no Q6_K quantizer, so it gets Q8_0 here, which is also
    llama-quantize's own fallback for Q6_K (row lengths that are not a multiple of 256).  Under
    Q8_0 it is Q8_0, as convert_hf_to_gguf.py writes it.

Vocabulary: the peers are fed token ids, never text, but llama.cpp needs n_vocab rows.  With
`tokenizer_json` the file carries the real byte-level BPE ("gpt2" model, Qwen2 pre-tokenizer),
padded to vocab_size with unused "[PAD{i}]" tokens as convert_hf_to_gguf.py pads; without it,
tokenizer.ggml.model = "no_vocab" and qwen2.vocab_size = vocab_size (llama.cpp then makes that
many empty tokens).

Tensors are quantized and written one at a time (the header is laid out first from the shapes),
so writing needs the state dict plus about two copies of the largest tensor.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import gguf
import numpy as np

from runtime.manifest import DecoderSpec, TokenSpec

log = logging.getLogger(__name__)

PRECISIONS = ("F32", "F16", "Q8_0", "Q4_0")
Q = gguf.GGMLQuantizationType
FILE_TYPES = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
              "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
QWEN2_PRE = "qwen2"  # llama.cpp's name for Qwen2's pre-tokenizer split (export.tokenizer.QWEN2_SPLIT)

# transformers' Qwen2 parameter names -> llama.cpp's (gguf.TensorNameMap agrees; the test checks it)
GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}
BLOCK_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    """'model.layers.3.self_attn.q_proj.bias' -> 'blk.3.attn_q.bias'."""
    if hf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf_name]
    prefix, _, rest = hf_name.partition("model.layers.")
    layer, _, suffix = rest.partition(".")
    if prefix or not layer.isdigit() or suffix not in BLOCK_NAMES:
        raise ValueError(f"no llama.cpp name for decoder tensor '{hf_name}'; expected Qwen2ForCausalLM names "
                         f"(export.peers.weights.hf_state_dict)")
    return f"blk.{layer}.{BLOCK_NAMES[suffix]}"


def tensor_type(name: str, shape: tuple[int, ...], precision: str, tied: bool) -> Q:
    """The GGML type of one tensor in a file of `precision` (see the module docstring for why)."""
    if len(shape) < 2 or precision == "F32":
        return Q.F32
    qtype = Q[precision]
    logits_table = name == "output.weight" or (tied and name == "token_embd.weight")
    if qtype == Q.Q4_0 and logits_table:
        qtype = Q.Q8_0
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return qtype if shape[-1] % block == 0 else Q.F16


def tensor_nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * type_size


def _numpy(t) -> np.ndarray:
    """A float32 NumPy view of a torch tensor or array (no copy when it already is fp32 on the CPU)."""
    if isinstance(t, np.ndarray):
        return t.astype(np.float32, copy=False)
    return t.detach().cpu().float().numpy()


def write_gguf(path: Path, spec: DecoderSpec, state: dict, precision: str, tokens: TokenSpec,
               tokenizer_json: Path | None) -> Path:
    """Write `state` (Qwen2ForCausalLM names, arrays or torch tensors) as a GGUF at `path`, via `path`.partial."""
    if precision not in PRECISIONS:
        raise ValueError(f"GGUF precision must be one of {PRECISIONS}, got {precision!r}")
    if spec.tied_embeddings == ("lm_head.weight" in state):
        raise ValueError(f"decoder spec says tied_embeddings={spec.tied_embeddings}, but the state dict "
                         f"{'has' if 'lm_head.weight' in state else 'lacks'} lm_head.weight")
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    names = {hf: gguf_name(hf) for hf in state}  # insertion order = file order
    types = {hf: tensor_type(names[hf], tuple(state[hf].shape), precision, spec.tied_embeddings) for hf in state}

    w = gguf.GGUFWriter(tmp, arch="qwen2")
    try:
        _write_metadata(w, spec, precision, tokens, tokenizer_json)
        for hf, qtype in types.items():
            shape = tuple(state[hf].shape)
            w.add_tensor_info(names[hf], shape, np.dtype(np.float32), tensor_nbytes(shape, qtype), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for hf, qtype in types.items():  # one tensor in memory at a time
            w.write_tensor_data(gguf.quants.quantize(_numpy(state[hf]), qtype))
            log.debug("%s %s -> %s", names[hf], list(state[hf].shape), qtype.name)
        w.close()
        os.replace(tmp, path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_metadata(w: gguf.GGUFWriter, spec: DecoderSpec, precision: str, tokens: TokenSpec,
                    tokenizer_json: Path | None) -> None:
    w.add_name("Flash-VL decoder")
    w.add_file_type(FILE_TYPES[precision])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(spec.max_seq_len)
    w.add_embedding_length(spec.dim)
    w.add_block_count(spec.n_layers)
    w.add_feed_forward_length(spec.hidden_dim)
    w.add_head_count(spec.n_heads)
    w.add_head_count_kv(spec.n_kv_heads)
    w.add_key_length(spec.head_dim)  # llama.cpp would otherwise take dim / n_heads
    w.add_value_length(spec.head_dim)
    w.add_rope_freq_base(spec.rope_theta)
    w.add_layer_norm_rms_eps(spec.norm_eps)
    w.add_vocab_size(spec.vocab_size)
    if tokenizer_json is None:
        w.add_tokenizer_model("no_vocab")
        return
    names, types, merges = bpe_vocab(Path(tokenizer_json), spec.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(QWEN2_PRE)
    w.add_token_list(names)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(tokens.eos_id)
    w.add_bos_token_id(tokens.eos_id)  # <|endoftext|>, as export.peers.weights.qwen2_config; never added
    w.add_add_bos_token(False)


def bpe_vocab(tokenizer_json: Path, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """tokenizer.json -> (vocab_size token strings, their gguf.TokenType, "a b" merges)."""
    from export.tokenizer import QWEN2_SPLIT

    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = data["model"]
    splits = [p.get("pattern", {}).get("Regex") for p in data.get("pre_tokenizer", {}).get("pretokenizers", [])]
    if model.get("type") != "BPE" or QWEN2_SPLIT not in splits:
        raise ValueError(f"{tokenizer_json}: expected a byte-level BPE with Qwen2's split regex, got model "
                         f"{model.get('type')!r} and splits {splits}; pass tokenizer_json=None for a GGUF "
                         f"without a vocabulary")
    names = [f"[PAD{i}]" for i in range(vocab_size)]  # rows past the tokenizer, as convert_hf_to_gguf.py pads
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    entries = [(text, i, gguf.TokenType.NORMAL) for text, i in model["vocab"].items()]
    entries += [(t["content"], t["id"], gguf.TokenType.CONTROL if t["special"] else gguf.TokenType.USER_DEFINED)
                for t in data.get("added_tokens", [])]
    for text, i, kind in entries:
        if not 0 <= i < vocab_size:
            raise ValueError(f"{tokenizer_json}: token {text!r} has id {i}, outside the decoder's "
                             f"{vocab_size} rows")
        names[i], types[i] = text, int(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return names, types, merges


def cached_gguf(cache: Path, manifest, precision: str) -> Path:
    """Where gguf_path keeps the engine's decoder at `precision`: cache/<key>/decoder-<precision>.gguf."""
    from export.peers.weights import cache_dir

    return cache_dir(cache, manifest) / f"decoder-{precision}.gguf"


def gguf_path(engine: Path, cache: Path, precision: str,
              progress=lambda msg: print(msg, file=sys.stderr, flush=True)) -> Path:
    """The engine's decoder in llama.cpp's format, in the cache (written once, with the engine's tokenizer)."""
    from export.peers.weights import decoder_module, hf_state_dict
    from runtime.manifest import load_manifest

    manifest = load_manifest(engine)
    path = cached_gguf(cache, manifest, precision)
    if path.is_file():
        return path
    progress(f"writing the decoder as a {precision} GGUF: {path}")
    model, _ = decoder_module(engine, manifest)
    write_gguf(path, manifest.decoder, hf_state_dict(model.decoder), precision, manifest.tokens,
               engine / manifest.tokenizer)
    return path
