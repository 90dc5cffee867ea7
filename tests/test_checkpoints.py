"""Real checkpoint loading, on checkpoints the tests write with transformers' own save_pretrained.

Separate folders (--vision/--llm/--adapter) and one combined, sharded Flash-VL-style folder
with prefixes the loader must detect.  The exported graphs are checked against transformers'
SigLIP and Qwen2 outputs, and every mismatch gets one error line listing what is wrong.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.extras import needs

needs("export")

import torch
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from export.build import WeightSource, export_engine
from export.presets import get_preset
from export.reference import run as reference_run
from export.tokenizer import build_chatml_tokenizer
from export.weights import CheckpointArgs
from runtime import FlashVL
from runtime.image import load_image
from runtime.preprocess import preprocess
from tests.conftest import assert_one_line_error, run_cli

TINY = get_preset("tiny")


def _perturb(model, seed, scale):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


@pytest.fixture(scope="module")
def hf_models():
    v, d = TINY.vision, TINY.decoder
    vision = _perturb(SiglipVisionModel(SiglipVisionConfig(
        hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.n_layers, num_attention_heads=v.n_heads,
        image_size=v.image_size, patch_size=v.patch_size, layer_norm_eps=v.norm_eps,
        hidden_act="gelu_pytorch_tanh")), 1, 0.1)
    llm = _perturb(Qwen2ForCausalLM(Qwen2Config(
        vocab_size=d.vocab_size, hidden_size=d.dim, intermediate_size=d.hidden_dim, num_hidden_layers=d.n_layers,
        num_attention_heads=d.n_heads, num_key_value_heads=d.n_kv_heads, head_dim=d.head_dim,
        rms_norm_eps=d.norm_eps, rope_theta=d.rope_theta, tie_word_embeddings=True,
        attn_implementation="eager")), 2, 0.2)
    a = TINY.adapter
    gen = torch.Generator().manual_seed(3)
    adapter = {"0.weight": 1 + 0.1 * torch.randn(a.in_dim, generator=gen),
               "0.bias": 0.1 * torch.randn(a.in_dim, generator=gen),
               "1.weight": torch.randn(a.hidden_dim, a.in_dim, generator=gen) / math.sqrt(a.in_dim),
               "1.bias": 0.1 * torch.randn(a.hidden_dim, generator=gen),
               "3.weight": torch.randn(a.out_dim, a.hidden_dim, generator=gen) / math.sqrt(a.hidden_dim),
               "3.bias": 0.1 * torch.randn(a.out_dim, generator=gen)}
    return vision, llm, adapter


@pytest.fixture(scope="module")
def separate(tmp_path_factory, hf_models) -> CheckpointArgs:
    vision, llm, adapter = hf_models
    d = tmp_path_factory.mktemp("separate")
    vision.save_pretrained(d / "siglip")
    llm.save_pretrained(d / "qwen2")
    build_chatml_tokenizer(TINY.tokenizer_vocab).save(str(d / "qwen2" / "tokenizer.json"))
    save_file({f"mlp1.{k}": t.contiguous() for k, t in adapter.items()}, str(d / "mlp1.safetensors"))
    return CheckpointArgs(vision=d / "siglip", llm=d / "qwen2", adapter=d / "mlp1.safetensors")


@pytest.fixture(scope="module")
def combined(tmp_path_factory, hf_models) -> Path:
    """A Flash-VL-style folder: one config, two shards, detected prefixes, a tied lm_head stored anyway."""
    vision, llm, adapter = hf_models
    d = tmp_path_factory.mktemp("combined")
    tensors = {f"vision_tower.vision_model.{k}": t for k, t in vision.state_dict().items()}
    tensors.update({f"mlp1.{k}": t for k, t in adapter.items()})
    tensors.update({f"language_model.{k}": t for k, t in llm.state_dict().items()})
    tensors["language_model.lm_head.weight"] = llm.model.embed_tokens.weight.detach()
    tensors["vision_tower.vision_model.head.probe"] = torch.zeros(1, 1, TINY.vision.width)  # unused MAP head
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: tensors[k].detach().clone().contiguous() for k in keys}, str(d / file))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: f for f, keys in shards.items() for k in keys}}))
    (d / "config.json").write_text(json.dumps({
        "architectures": ["FlashVLChatModel"], "vision_config": vision.config.to_dict(),
        "llm_config": llm.config.to_dict()}))
    build_chatml_tokenizer(TINY.tokenizer_vocab).save(str(d / "tokenizer.json"))
    return d


@pytest.fixture(scope="module")
def separate_engine(tmp_path_factory, separate) -> Path:
    out = tmp_path_factory.mktemp("eng") / "separate"
    export_engine(TINY, WeightSource(checkpoint=separate), out)
    return out


def numpy_adapter(features: np.ndarray, w: dict) -> np.ndarray:
    # [T, C] patch features (32-bit) -> InternVL pixel shuffle -> LayerNorm -> Linear -> GELU(erf) -> Linear
    g, c = TINY.vision.grid // 2, features.shape[-1]
    x = features.reshape(g, 2, g, 2, c).transpose(0, 2, 1, 3, 4).reshape(g * g, 4 * c).astype(np.float64)
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + TINY.adapter.norm_eps)
    x = x * w["0.weight"] + w["0.bias"]
    x = x @ w["1.weight"].T + w["1.bias"]
    x = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    return x @ w["3.weight"].T + w["3.bias"]  # [tokens, out_dim]


def test_separate_checkpoints_export_matches_transformers(separate_engine, hf_models, test_images):
    vision, llm, adapter = hf_models
    vl = FlashVL.load(separate_engine)
    pixels = preprocess(load_image(test_images["scene"]), vl.manifest.preprocess)
    embeds = vl.vision.encode(pixels)[0]
    with torch.no_grad():
        feats = vision(pixel_values=torch.from_numpy(pixels)).last_hidden_state[0].numpy()
    want = numpy_adapter(feats, {k: t.double().numpy() for k, t in adapter.items()})
    assert np.abs(embeds - want).max() <= 1e-4

    ids = vl.tokenizer.encode_prompt("How many circles?", image_tokens=0)
    logits = vl.decoder.forward(vl.embed.prompt(ids, None), 0)
    with torch.no_grad():
        ref = llm(input_ids=torch.from_numpy(ids)[None]).logits[0, -1].numpy()
    assert np.abs(logits[0] - ref).max() <= 1e-4


def test_reference_and_runtime_agree_on_a_checkpoint(separate_engine, test_images):
    want = reference_run(separate_engine, test_images["wide_jpeg"], "Describe.", 16, None)
    got = FlashVL.load(separate_engine).generate(test_images["wide_jpeg"], "Describe.", max_new_tokens=16)
    assert got.token_ids == want["token_ids"]
    m = FlashVL.load(separate_engine).manifest
    assert m.source.kind == "checkpoint" and len(m.source.checkpoint) >= 5
    assert dict(m.source.checkpoint_args)["adapter"].endswith("mlp1.safetensors")


def test_combined_sharded_folder_gives_the_same_graphs(combined, separate_engine, tmp_path):
    proc = run_cli("-m", "export", "--preset", "tiny", "--checkpoint", str(combined), "--out", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    assert "tensors" in proc.stderr  # progress lines
    for f in ("vision.onnx.data", "decoder.onnx.data"):
        assert (tmp_path / "c" / f).read_bytes() == (separate_engine / f).read_bytes()


def test_reference_refuses_a_changed_checkpoint(tmp_path, separate):
    shutil.copytree(separate.llm, tmp_path / "qwen2")
    shutil.copytree(separate.vision, tmp_path / "siglip")
    args = CheckpointArgs(vision=tmp_path / "siglip", llm=tmp_path / "qwen2", adapter=separate.adapter)
    export_engine(TINY, WeightSource(checkpoint=args), tmp_path / "e")
    (tmp_path / "qwen2" / "config.json").write_text((tmp_path / "qwen2" / "config.json").read_text() + " ")
    proc = run_cli("-m", "export.reference", "--engine", str(tmp_path / "e"), "--max-new-tokens", "2")
    assert_one_line_error(proc, "config.json", "changed since the engine folder was exported")


def _export(tmp_path, *args):
    return run_cli("-m", "export", "--preset", "tiny", *args, "--out", str(tmp_path / "out"))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_and_unmatched_tensors_are_listed(tmp_path, combined):
    d = _copy(combined, tmp_path / "ck")
    from safetensors.torch import load_file
    shard = d / "model-00001-of-00002.safetensors"
    tensors = load_file(str(shard))
    dropped = sorted(k for k in tensors if "layers.1.mlp" in k)[0]
    del tensors[dropped]
    tensors["language_model.model.extra_adapter.weight"] = torch.zeros(2)
    save_file(tensors, str(shard))
    line = assert_one_line_error(_export(tmp_path, "--checkpoint", str(d)), "missing llm tensors", dropped,
                                 "unmatched", "language_model.model.extra_adapter.weight")
    assert not (tmp_path / "out" / "manifest.json").exists(), line


def test_wrong_shapes_are_listed(tmp_path, separate):
    d = tmp_path / "mlp1.safetensors"
    from safetensors.torch import load_file
    t = load_file(str(separate.adapter))
    t["mlp1.3.bias"] = torch.zeros(7)
    save_file(t, str(d))
    assert_one_line_error(_export(tmp_path, "--vision", str(separate.vision), "--llm", str(separate.llm),
                                  "--adapter", str(d)), "mlp1.3.bias [7] (expected [64])")


def test_config_that_disagrees_with_the_preset(tmp_path, separate):
    d = _copy(separate.llm, tmp_path / "qwen2")
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = 5
    (d / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(_export(tmp_path, "--vision", str(separate.vision), "--llm", str(d),
                                  "--adapter", str(separate.adapter)), "num_hidden_layers=5 (preset has 2)")


def test_llm_folder_without_tokenizer(tmp_path, separate):
    d = _copy(separate.llm, tmp_path / "qwen2")
    (d / "tokenizer.json").unlink()
    assert_one_line_error(_export(tmp_path, "--vision", str(separate.vision), "--llm", str(d),
                                  "--adapter", str(separate.adapter)), "tokenizer.json: missing")


@pytest.mark.parametrize("args,needle", [
    (["--checkpoint", "X", "--vision", "Y"], "not both"),
    (["--vision", "X"], "--llm"),
    ([], "--random-weights"),
])
def test_argument_mistakes(tmp_path, separate, args, needle):
    args = [str(separate.vision) if a in ("X", "Y") else a for a in args]
    if "--checkpoint" in args:
        args[args.index("--checkpoint") + 1] = str(separate.llm)
    proc = _export(tmp_path, *args)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_random_export_is_deterministic(tiny_engine, tmp_path):
    from runtime.manifest import load_manifest
    again = export_engine(TINY, WeightSource(seed=0), tmp_path / "again")
    other = export_engine(TINY, WeightSource(seed=1), tmp_path / "other")
    first = {f.path: f.sha256 for f in load_manifest(tiny_engine).files}
    assert {f.path: f.sha256 for f in again.files} == first
    assert {f.path: f.sha256 for f in other.files}["decoder.onnx.data"] != first["decoder.onnx.data"]
