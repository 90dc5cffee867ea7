"""Architecture presets: the real Flash-VL 2B dimensions (static, dynamic+ISS) and tiny twins for tests.

A preset is made of the manifest's own spec dataclasses, so the exporter and the
runtime share one description of the model.  `--checkpoint` weights must match the
preset's shapes; `export.weights` checks every tensor and lists the ones that do not.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import FlashVLError
from runtime.manifest import AdapterSpec, ChatSpec, DecoderSpec, PreprocessSpec, TilingSpec, VisionSpec

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
    tiling: TilingSpec | None = None  # dynamic resolution (tiles + ISS); None: one fixed-size image


def _aimv2_preprocess(size: int) -> PreprocessSpec:
    # AIMv2 uses the CLIP processor's normalisation; tiles are cut from a bicubic-resized canvas.
    return PreprocessSpec(height=size, width=size, resample="pil_bicubic", rescale=1 / 255,
                          mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711),
                          alpha_background=(255, 255, 255))


def _tiling(vision: VisionSpec, adapter: AdapterSpec, iss_margin: int, max_tiles: int = 4) -> TilingSpec:
    return TilingSpec(max_tiles=max_tiles, thumbnail=True, iss_margin=iss_margin,
                      cell_px=vision.patch_size * adapter.shuffle_factor,
                      cells_per_side=vision.grid // adapter.shuffle_factor, order="raster_then_thumbnail")


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

# The demo model (export/demo): the same structure, small enough to train on 2 CPU cores in minutes, on
# synthetic scenes; 128 px -> 8x8 patches -> 16 image tokens, 1.03M parameters.
_DEMO_VISION = VisionSpec(family="siglip", image_size=128, patch_size=16, width=96, n_layers=3, n_heads=4,
                          mlp_dim=256, act="gelu_tanh", norm_eps=1e-6, feature="post_layernorm")
_DEMO_DECODER = DecoderSpec(family="qwen2", n_layers=3, dim=128, n_heads=4, n_kv_heads=2, head_dim=32,
                            hidden_dim=352, norm_eps=1e-6, rope_theta=1e6, vocab_size=512,
                            tied_embeddings=True, max_seq_len=512, kv_layout="seq_major")

# AIMv2-huge-patch14-448 tiles (32x32 patches -> 256 tokens each) + the same adapter structure + Qwen2.
_DYNAMIC_VISION = VisionSpec(family="aimv2", image_size=448, patch_size=14, width=1536, n_layers=24, n_heads=12,
                             mlp_dim=4096, act="swiglu", norm_eps=1e-5, feature="post_rmsnorm")
_TINY_DYNAMIC_VISION = VisionSpec(family="aimv2", image_size=56, patch_size=7, width=48, n_layers=2, n_heads=4,
                                  mlp_dim=96, act="swiglu", norm_eps=1e-5, feature="post_rmsnorm")
_DYNAMIC_ADAPTER = _adapter(_DYNAMIC_VISION, _STATIC_DECODER.dim)
_TINY_DYNAMIC_ADAPTER = _adapter(_TINY_DYNAMIC_VISION, _TINY_DECODER.dim)

PRESETS = {
    "flash-vl-2b-static": Preset("flash-vl-2b-static", "Flash-VL-2B-Static", _STATIC_VISION,
                                 _adapter(_STATIC_VISION, _STATIC_DECODER.dim), _STATIC_DECODER,
                                 _siglip_preprocess(512), _CHAT, tokenizer_vocab=8192, init_std=0.02),
    "tiny": Preset("tiny", "Flash-VL-tiny (test model)", _TINY_VISION, _adapter(_TINY_VISION, _TINY_DECODER.dim),
                   _TINY_DECODER, _siglip_preprocess(64), _CHAT, tokenizer_vocab=512, init_std=0.25),
    "demo": Preset("demo", "Flash-VL-demo (trained on synthetic scenes)", _DEMO_VISION,
                   _adapter(_DEMO_VISION, _DEMO_DECODER.dim), _DEMO_DECODER, _siglip_preprocess(128), _CHAT,
                   tokenizer_vocab=512, init_std=0.02),
    # ISS margin 2 cells (56 px of context past each seam): a choice, recorded in the manifest.
    "flash-vl-2b-dynamic-iss": Preset("flash-vl-2b-dynamic-iss", "Flash-VL-2Bd-ISS", _DYNAMIC_VISION,
                                      _DYNAMIC_ADAPTER, _STATIC_DECODER, _aimv2_preprocess(448), _CHAT,
                                      tokenizer_vocab=8192, init_std=0.02,
                                      tiling=_tiling(_DYNAMIC_VISION, _DYNAMIC_ADAPTER, iss_margin=2)),
    "tiny-dynamic": Preset("tiny-dynamic", "Flash-VL-tiny-dynamic (test model)", _TINY_DYNAMIC_VISION,
                           _TINY_DYNAMIC_ADAPTER, _TINY_DECODER, _aimv2_preprocess(56), _CHAT, tokenizer_vocab=512,
                           init_std=0.25, tiling=_tiling(_TINY_DYNAMIC_VISION, _TINY_DYNAMIC_ADAPTER, iss_margin=1)),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise FlashVLError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
