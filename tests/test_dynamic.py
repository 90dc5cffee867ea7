"""Dynamic resolution + ISS end to end (tiny-dynamic, fp32): runtime == PyTorch reference.

The reference calls the same runtime.tiling geometry, runs the PyTorch AIMv2 tower on the
tiles and decodes greedily; the runtime's token ids must be equal for images of different
aspect ratios, with ISS on and off.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.extras import needs

needs("export")

import torch

from export.reference import rebuild, run as reference_run
from runtime import FlashVL
from runtime.image import load_image
from runtime.tiling import plan, tile_pixels
from tests.conftest import run_cli

IMAGES = ["scene", "panorama", "portrait", "needle", "dot", "wide_jpeg"]


@pytest.fixture(scope="module")
def vl(tiny_dynamic_engine):
    return FlashVL.load(tiny_dynamic_engine)


@pytest.mark.parametrize("iss", [True, False], ids=["iss", "plain"])
@pytest.mark.parametrize("image", IMAGES)
def test_greedy_tokens_equal_reference(vl, tiny_dynamic_engine, test_images, image, iss):
    want = reference_run(tiny_dynamic_engine, test_images[image], "Describe the image.", 16, None, iss=iss)
    got = vl.generate(test_images[image], "Describe the image.", max_new_tokens=16, iss=iss)
    assert got.token_ids == want["token_ids"]
    assert got.tiling == want["tiling"] and got.image_tokens == want["image_tokens"]
    rgb = load_image(test_images[image])
    layout = plan(rgb.shape[1], rgb.shape[0], vl.manifest.tiling, iss=iss)
    assert got.image_tokens == layout.image_tokens == got.tiling["image_tokens"]
    assert got.tiling["iss_margin"] == (vl.manifest.tiling.iss_margin if iss else 0)


def test_iss_spends_fewer_tokens_than_plain_cropping(vl, test_images):
    iss = vl.generate(test_images["scene"], "Describe.", max_new_tokens=2)
    plain = vl.generate(test_images["scene"], "Describe.", max_new_tokens=2, iss=False)
    assert iss.tiling["grid"] == plain.tiling["grid"] == [2, 2]
    assert iss.image_tokens == 6 * 6 + 16 < plain.image_tokens == plain.tiling["plain_dynamic_tokens"] == 5 * 16
    assert iss.tiling["plain_dynamic_tokens"] == plain.image_tokens
    assert iss.prompt_tokens - plain.prompt_tokens == iss.image_tokens - plain.image_tokens


def test_vision_graph_batch_matches_pytorch(vl, test_images):
    model = rebuild(vl.manifest)
    rgb = load_image(test_images["panorama"])
    layout = plan(rgb.shape[1], rgb.shape[0], vl.manifest.tiling)
    pixels = tile_pixels(rgb, layout, vl.manifest.preprocess)
    assert pixels.shape[0] == layout.n_tiles > 1
    got = vl.vision.encode(pixels)
    with torch.no_grad():
        want = model.vision_graph(torch.from_numpy(pixels)).numpy()
    assert np.abs(got - want).max() <= 1e-4


def test_cli_json_reports_the_tiling(tiny_dynamic_engine, test_images):
    args = ["--engine", str(tiny_dynamic_engine), "--image", str(test_images["panorama"]), "--max-new-tokens", "8",
            "--json"]
    ours, ref = run_cli("-m", "runtime.run", *args), run_cli("-m", "export.reference", *args)
    plain = run_cli("-m", "runtime.run", *args, "--no-iss")
    assert ours.returncode == ref.returncode == plain.returncode == 0, (ours.stderr, ref.stderr, plain.stderr)
    a, b, p = json.loads(ours.stdout), json.loads(ref.stdout), json.loads(plain.stdout)
    assert a["token_ids"] == b["token_ids"] and a["tiling"] == b["tiling"]
    assert a["tiling"]["grid"] == [1, 4] and a["tiling"]["tiles"] == 5 and a["tiling"]["thumbnail"]
    assert a["image_tokens"] == (4 * 4 - 2 * 3) * 4 + 16 and a["tiling"]["plain_dynamic_tokens"] == p["image_tokens"]
    stream = run_cli("-m", "runtime.run", *args[:-1])
    assert "1x4 grid, 5 tiles" in stream.stderr and "plain cropping: 80" in stream.stderr


def test_static_engine_reports_no_tiling(tiny_engine, test_images):
    r = FlashVL.load(tiny_engine).generate(test_images["scene"], "Hi", max_new_tokens=2)
    assert r.tiling is None and r.as_dict()["tiling"] is None


def test_aimv2_checkpoint_loads_and_matches_transformers(tmp_path, test_images):
    """An AIMv2 folder written by transformers' save_pretrained, exported with --vision/--llm/--adapter."""
    from safetensors.torch import save_file
    from transformers import Aimv2VisionConfig, Aimv2VisionModel, Qwen2Config, Qwen2ForCausalLM

    from export.build import WeightSource, export_engine
    from export.presets import get_preset
    from export.tokenizer import build_chatml_tokenizer
    from export.weights import CheckpointArgs

    p = get_preset("tiny-dynamic")
    v, d, a = p.vision, p.decoder, p.adapter
    torch.manual_seed(5)
    vision = Aimv2VisionModel(Aimv2VisionConfig(
        hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.n_layers, num_attention_heads=v.n_heads,
        image_size=v.image_size, patch_size=v.patch_size, rms_norm_eps=v.norm_eps, qkv_bias=False, mlp_bias=False,
        use_head=True, is_native=False)).eval()  # the pooling head is stored and must be ignored
    with torch.no_grad():
        for prm in vision.parameters():
            prm.add_(torch.randn_like(prm) * 0.1)
    llm = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=d.vocab_size, hidden_size=d.dim, intermediate_size=d.hidden_dim, num_hidden_layers=d.n_layers,
        num_attention_heads=d.n_heads, num_key_value_heads=d.n_kv_heads, head_dim=d.head_dim,
        rms_norm_eps=d.norm_eps, rope_theta=d.rope_theta, tie_word_embeddings=True)).eval()
    vision.save_pretrained(tmp_path / "aimv2")
    llm.save_pretrained(tmp_path / "qwen2")
    build_chatml_tokenizer(p.tokenizer_vocab).save(str(tmp_path / "qwen2" / "tokenizer.json"))
    gen = torch.Generator().manual_seed(6)
    adapter = {"0.weight": torch.ones(a.in_dim), "0.bias": torch.zeros(a.in_dim),
               "1.weight": torch.randn(a.hidden_dim, a.in_dim, generator=gen) * 0.1,
               "1.bias": torch.zeros(a.hidden_dim),
               "3.weight": torch.randn(a.out_dim, a.hidden_dim, generator=gen) * 0.1, "3.bias": torch.zeros(a.out_dim)}
    save_file({f"mlp1.{k}": t for k, t in adapter.items()}, str(tmp_path / "mlp1.safetensors"))
    args = CheckpointArgs(vision=tmp_path / "aimv2", llm=tmp_path / "qwen2", adapter=tmp_path / "mlp1.safetensors")
    engine = tmp_path / "engine"
    export_engine(p, WeightSource(checkpoint=args), engine)

    vl = FlashVL.load(engine)
    rgb = load_image(test_images["portrait"])
    layout = plan(rgb.shape[1], rgb.shape[0], vl.manifest.tiling)
    pixels = tile_pixels(rgb, layout, vl.manifest.preprocess)
    got = vl.vision.encode(pixels)  # [tiles, 16, 64]
    with torch.no_grad():
        feats = vision(pixel_values=torch.from_numpy(pixels)).last_hidden_state  # [tiles, 64, 48]
        g, c = v.grid // 2, feats.shape[-1]
        x = feats.reshape(-1, g, 2, g, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, g * g, 4 * c)  # pixel shuffle
        x = torch.nn.functional.layer_norm(x, (4 * c,), eps=a.norm_eps)
        want = torch.nn.functional.gelu(x @ adapter["1.weight"].T) @ adapter["3.weight"].T
    assert np.abs(got - want.numpy()).max() <= 1e-4
    ref = reference_run(engine, test_images["portrait"], "Describe.", 8, None)
    assert vl.generate(test_images["portrait"], "Describe.", max_new_tokens=8).token_ids == ref["token_ids"]
