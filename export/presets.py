"""Architecture presets: the real Flash-VL-2B-Static dimensions and a tiny twin for tests.

A preset is made of the manifest's own spec dataclasses, so the exporter and the
runtime share one description of the model.  `--checkpoint` weights must match the
preset's shapes; `export.weights` checks every tensor and lists the ones that do not.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import FlashVLError
from runtime.manifest import AdapterSpec, ChatSpec, DecoderSpec, PreprocessSpec, VisionSpec

DEFAULT_SYSTEM = "You are a helpful assistant."


@dataclass(frozen=True)
class Preset:
    name: str
    model: str  # the model name written to the manifest
    vision: VisionSpec
    adapter: AdapterSpec
    decoder: DecoderSpec
    preprocess: PreprocessSpec
    chat: ChatSpec
    tokenizer_vocab: int  # BPE size of the tokenizer built for --random-weights
    init_std: float  # std of --random-weights matrices: 0.02 as Hugging Face inits; larger for tiny,
    #                  whose narrow layers would otherwise emit one token whatever the input


def _siglip_preprocess(size: int) -> PreprocessSpec:
    # SigLIP/SigLIP2 processors: PIL bicubic resize, x/255, (x-0.5)/0.5, RGBA on white.
    return PreprocessSpec(height=size, width=size, resample="pil_bicubic", rescale=1 / 255,
                          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), alpha_background=(255, 255, 255))


def _adapter(vision: VisionSpec, decoder_dim: int, factor: int = 2) -> AdapterSpec:
    return AdapterSpec(kind="pixel_shuffle_mlp", shuffle_factor=factor, shuffle_order="internvl",
                       in_dim=vision.width * factor * factor, hidden_dim=decoder_dim, out_dim=decoder_dim,
                       norm_eps=1e-5, image_tokens=vision.n_patches // (factor * factor))


_CHAT = ChatSpec(format="chatml", default_system=DEFAULT_SYSTEM, image_placement="before_text")

# SigLIP2-so400m-patch16-512 + pixel shuffle x2 + Qwen2-1.5B-Instruct (arXiv 2505.09498).
_STATIC_VISION = VisionSpec(family="siglip", image_size=512, patch_size=16, width=1152, n_layers=27,
                            n_heads=16, mlp_dim=4304, act="gelu_tanh", norm_eps=1e-6, feature="post_layernorm")
_STATIC_DECODER = DecoderSpec(family="qwen2", n_layers=28, dim=1536, n_heads=12, n_kv_heads=2, head_dim=128,
                              hidden_dim=8960, norm_eps=1e-6, rope_theta=1e6, vocab_size=151936,
                              tied_embeddings=True, max_seq_len=4096, kv_layout="seq_major")

# Same structure, small widths: every code path of the real model, in milliseconds.
_TINY_VISION = VisionSpec(family="siglip", image_size=64, patch_size=8, width=32, n_layers=2, n_heads=4,
                          mlp_dim=64, act="gelu_tanh", norm_eps=1e-6, feature="post_layernorm")
_TINY_DECODER = DecoderSpec(family="qwen2", n_layers=2, dim=64, n_heads=4, n_kv_heads=2, head_dim=16,
                            hidden_dim=128, norm_eps=1e-6, rope_theta=1e6, vocab_size=640,
                            tied_embeddings=True, max_seq_len=256, kv_layout="seq_major")

PRESETS = {
    "flash-vl-2b-static": Preset("flash-vl-2b-static", "Flash-VL-2B-Static", _STATIC_VISION,
                                 _adapter(_STATIC_VISION, _STATIC_DECODER.dim), _STATIC_DECODER,
                                 _siglip_preprocess(512), _CHAT, tokenizer_vocab=8192, init_std=0.02),
    "tiny": Preset("tiny", "Flash-VL-tiny (test model)", _TINY_VISION, _adapter(_TINY_VISION, _TINY_DECODER.dim),
                   _TINY_DECODER, _siglip_preprocess(64), _CHAT, tokenizer_vocab=512, init_std=0.25),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise FlashVLError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
