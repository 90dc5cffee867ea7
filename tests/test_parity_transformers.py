"""Our PyTorch modules against transformers' own (fp32, max abs diff <= 1e-4).

Identical tiny random weights go into transformers' SiglipVisionModel / Qwen2ForCausalLM and
into export.vision / export.decoder; outputs and logits must agree, with and without a KV cache,
and with image rows spliced in.  The adapter's pixel shuffle is checked against a NumPy
formulation written from its definition (2x2 neighbours concatenated TL, TR, BL, BR).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from tests.extras import needs

needs("export")

import torch
from hypothesis import given, settings, strategies as st
from transformers import (Aimv2VisionConfig, Aimv2VisionModel, DynamicCache, Qwen2Config, Qwen2ForCausalLM,
                          SiglipVisionConfig, SiglipVisionModel)

from export.adapter import pixel_shuffle
from export.decoder import Decoder
from export.presets import get_preset
from export.vision import VisionTower
from export.vision_aimv2 import Aimv2Tower
from runtime.embedding import splice_image

TOL = 1e-4
# transformers 5.x renames `past_key_values` to `cache` (the old name goes in 5.40)
CACHE = "cache" if "cache" in inspect.signature(Qwen2ForCausalLM.forward).parameters else "past_key_values"
TINY = get_preset("tiny")


def seeded_perturbed(build, seed: int, scale: float):
    """A transformers model built under `seed`, every parameter moved off its init (norms and biases too)."""
    torch.manual_seed(seed)
    model = build().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def hf_siglip(spec) -> SiglipVisionModel:
    cfg = SiglipVisionConfig(hidden_size=spec.width, intermediate_size=spec.mlp_dim, num_hidden_layers=spec.n_layers,
                             num_attention_heads=spec.n_heads, image_size=spec.image_size, patch_size=spec.patch_size,
                             layer_norm_eps=spec.norm_eps, hidden_act="gelu_pytorch_tanh", vision_use_head=False)
    return seeded_perturbed(lambda: SiglipVisionModel(cfg), seed=1, scale=0.1)


def hf_qwen2(spec) -> Qwen2ForCausalLM:
    cfg = Qwen2Config(vocab_size=spec.vocab_size, hidden_size=spec.dim, intermediate_size=spec.hidden_dim,
                      num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads,
                      num_key_value_heads=spec.n_kv_heads, head_dim=spec.head_dim, rms_norm_eps=spec.norm_eps,
                      rope_theta=spec.rope_theta, tie_word_embeddings=True, max_position_embeddings=spec.max_seq_len,
                      attn_implementation="eager")
    return seeded_perturbed(lambda: Qwen2ForCausalLM(cfg), seed=2, scale=0.2)


def ours_from_hf_vision(hf: SiglipVisionModel) -> VisionTower:
    tower = VisionTower(TINY.vision).eval()
    sd = {k.removeprefix("vision_model."): v for k, v in hf.state_dict().items()}  # prefix varies by version
    tower.load_state_dict(sd, strict=True)
    return tower


def ours_from_hf_decoder(hf: Qwen2ForCausalLM) -> Decoder:
    dec = Decoder(TINY.decoder).eval()
    sd = {k[len("model."):]: v for k, v in hf.state_dict().items() if k.startswith("model.")}
    dec.load_state_dict(sd, strict=True)
    return dec


@torch.no_grad()
def test_vision_tower_matches_transformers():
    hf = hf_siglip(TINY.vision)
    ours = ours_from_hf_vision(hf)
    pixels = torch.randn(3, 3, TINY.vision.image_size, TINY.vision.image_size)
    want = hf(pixel_values=pixels).last_hidden_state  # post_layernorm applied
    got = ours(pixels)
    assert got.shape == (3, TINY.vision.n_patches, TINY.vision.width)
    assert (got - want).abs().max().item() <= TOL


def hf_aimv2(spec) -> Aimv2VisionModel:
    cfg = Aimv2VisionConfig(hidden_size=spec.width, intermediate_size=spec.mlp_dim, num_hidden_layers=spec.n_layers,
                            num_attention_heads=spec.n_heads, image_size=spec.image_size, patch_size=spec.patch_size,
                            rms_norm_eps=spec.norm_eps, hidden_act="silu", qkv_bias=False, mlp_bias=False,
                            use_head=False, is_native=False)
    return seeded_perturbed(lambda: Aimv2VisionModel(cfg), seed=3, scale=0.1)


@torch.no_grad()
def test_aimv2_tower_matches_transformers():
    spec = get_preset("tiny-dynamic").vision
    hf = hf_aimv2(spec)
    ours = Aimv2Tower(spec).eval()
    ours.load_state_dict({k.removeprefix("vision_model."): v for k, v in hf.state_dict().items()}, strict=True)
    pixels = torch.randn(5, 3, spec.image_size, spec.image_size)  # a batch of tiles
    want = hf(pixel_values=pixels).last_hidden_state  # after the final RMSNorm
    got = ours(pixels)
    assert got.shape == (5, spec.n_patches, spec.width)
    assert (got - want).abs().max().item() <= TOL


def test_dynamic_preset_has_aimv2_huge_dimensions():
    p = get_preset("flash-vl-2b-dynamic-iss")
    v = p.vision
    assert (v.family, v.image_size, v.patch_size, v.n_patches) == ("aimv2", 448, 14, 1024)
    assert (v.width, v.n_layers, v.n_heads, v.mlp_dim, v.norm_eps) == (1536, 24, 12, 4096, 1e-5)
    assert (p.adapter.image_tokens, p.adapter.in_dim, p.adapter.out_dim) == (256, 6144, 1536)
    assert p.decoder == get_preset("flash-vl-2b-static").decoder
    assert (p.tiling.max_tiles, p.tiling.cells_per_side, p.tiling.cell_px, p.tiling.thumbnail) == (4, 16, 28, True)


@torch.no_grad()
def test_decoder_prefill_and_cached_steps_match_transformers():
    hf = hf_qwen2(TINY.decoder)
    ours = ours_from_hf_decoder(hf)
    ids = torch.tensor([[11, 200, 37, 5, 99, 420, 17, 8]])  # [1, 8]
    cache = DynamicCache(config=hf.config)
    want = hf(input_ids=ids, **{CACHE: cache}, use_cache=True).logits[:, -1]
    logits, *past = ours(ours.embed_tokens(ids), torch.arange(8)[None], *ours.empty_past())
    assert (logits - want).abs().max().item() <= TOL
    pos = 8
    for token in (301, 4, 77):  # decode steps through the KV cache on both sides
        step = torch.tensor([[token]])
        want = hf(input_ids=step, **{CACHE: cache}, use_cache=True).logits[:, -1]
        logits, *new = ours(ours.embed_tokens(step), torch.tensor([[pos]]), *past)
        past = [torch.cat((p, n)) for p, n in zip(past, new)]
        pos += 1
        assert (logits - want).abs().max().item() <= TOL
    # the cache we keep is the one transformers keeps: same K/V, seq-major
    k0 = cache.layers[0].keys if hasattr(cache, "layers") else cache.key_cache[0]  # [1, Hkv, T, hd]
    assert (past[0].permute(1, 2, 0, 3) - k0).abs().max().item() <= TOL


@torch.no_grad()
def test_ragged_batch_step_matches_transformers_per_sequence():
    """Two sequences of 7 and 3 cached rows decode in one call of our decoder (past padded to 7 rows, each at
    its own position: export.decoder.ragged_causal_mask); each row's logits are transformers' for that
    sequence alone."""
    hf = hf_qwen2(TINY.decoder)
    ours = ours_from_hf_decoder(hf)
    prompts = [torch.tensor([[11, 200, 37, 5, 99, 420, 17]]), torch.tensor([[8, 301, 4]])]
    nxt = torch.tensor([[77], [123]])  # [2, 1]: each sequence's next token
    past = []
    for ids in prompts:  # each prompt alone, then its rows into its own column of a padded [7, 2, Hkv, hd] past
        _, *kv = ours(ours.embed_tokens(ids), torch.arange(ids.shape[1])[None], *ours.empty_past())
        past.append(kv)
    padded = []
    for a_kv, b_kv in zip(*past):
        block = torch.zeros((7, 2) + a_kv.shape[2:])
        block[:, 0] = a_kv[:, 0]
        block[:3, 1] = b_kv[:, 0]  # rows 3..6 of sequence 1 are garbage it must not see
        block[3:, 1] = 1e3
        padded.append(block)
    logits, *_ = ours(ours.embed_tokens(nxt), torch.tensor([[7], [3]]), *padded)  # [2, V]
    for b, ids in enumerate(prompts):
        want = hf(input_ids=torch.cat((ids, nxt[b:b + 1]), 1)).logits[0, -1]
        assert (logits[b] - want).abs().max().item() <= TOL


@torch.no_grad()
def test_image_rows_spliced_by_the_runtime_match_inputs_embeds():
    hf = hf_qwen2(TINY.decoder)
    ours = ours_from_hf_decoder(hf)
    ids = np.array([11, 200, 3, 3, 3, 99, 420])  # 3 = image_pad here
    image = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    embeds = hf.model.embed_tokens(torch.from_numpy(ids)[None]).clone()
    embeds[0, 2:5] = torch.from_numpy(image)
    want = hf(inputs_embeds=embeds).logits[:, -1]
    x = splice_image(ours.embed_tokens.weight.numpy(), ids, image, image_pad_id=3)  # [7, 64]
    got, *_ = ours(torch.from_numpy(x)[None], torch.arange(7)[None], *ours.empty_past())
    assert (got - want).abs().max().item() <= TOL
    with pytest.raises(ValueError, match="3 image_pad tokens but 2 image embeddings"):
        splice_image(ours.embed_tokens.weight.numpy(), ids, image[:2], image_pad_id=3)


@torch.no_grad()
def test_batched_decoder_rows_are_independent():
    hf = hf_qwen2(TINY.decoder)
    ours = ours_from_hf_decoder(hf)
    ids = torch.tensor([[11, 200, 37, 5], [9, 8, 7, 6]])
    logits, *_ = ours(ours.embed_tokens(ids), torch.arange(4).expand(2, 4), *ours.empty_past(2))
    want = hf(input_ids=ids).logits[:, -1]
    assert (logits - want).abs().max().item() <= TOL


def numpy_pixel_shuffle(x: np.ndarray, grid: int, f: int) -> np.ndarray:
    # [T, C] raster over grid x grid -> [(grid/f)^2, C*f*f]; each output token concatenates its
    # f x f neighbourhood row by row: (0,0), (0,1), ..., (1,0), ...
    g, c = grid // f, x.shape[-1]
    x = x.reshape(g, f, g, f, c)  # [i, m, j, k, C]
    return x.transpose(0, 2, 1, 3, 4).reshape(g * g, f * f * c)  # [i*g + j, (m, k, C)]


@settings(max_examples=25, deadline=None)
@given(g=st.integers(1, 6), c=st.integers(1, 5))
def test_pixel_shuffle_matches_numpy_definition(g, c):
    grid = 2 * g
    x = np.random.default_rng(g * 10 + c).standard_normal((grid * grid, c)).astype(np.float32)
    got = pixel_shuffle(torch.from_numpy(x)[None], grid, 2)[0].numpy()
    np.testing.assert_array_equal(got, numpy_pixel_shuffle(x, grid, 2))


def test_full_size_preset_has_the_papers_dimensions():
    p = get_preset("flash-vl-2b-static")
    assert (p.vision.image_size, p.vision.patch_size, p.vision.n_patches, p.vision.width) == (512, 16, 1024, 1152)
    assert (p.vision.n_layers, p.vision.n_heads, p.vision.mlp_dim) == (27, 16, 4304)
    assert (p.adapter.image_tokens, p.adapter.in_dim, p.adapter.out_dim) == (256, 4608, 1536)
    d = p.decoder
    assert (d.n_layers, d.dim, d.n_heads, d.n_kv_heads, d.head_dim, d.hidden_dim) == (28, 1536, 12, 2, 128, 8960)
    assert (d.vocab_size, d.rope_theta, d.norm_eps, d.tied_embeddings) == (151936, 1e6, 1e-6, True)
