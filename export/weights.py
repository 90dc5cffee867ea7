"""Weights for the exported model: seeded random weights, or local Hugging Face checkpoints.

Sources (never a download):
  random      `random_weights(model, seed)`: the same seed gives the same bytes.
  combined    one folder (config.json + *.safetensors) holding the vision tower, the
              adapter and the LLM under prefixes that are detected, not configured.
  separate    --vision DIR (SiglipVisionModel or SiglipModel), --llm DIR (Qwen2ForCausalLM),
              --adapter FILE (safetensors with the adapter's LayerNorm/Linear/Linear).

Every tensor of the model must be matched exactly once with the right shape; anything
missing, unmatched or misshapen is listed in one `CheckpointError`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from export.model import FlashVL
from export.presets import Preset
from runtime.errors import FlashVLError
from runtime.files import file_entry
from runtime.manifest import FileEntry

log = logging.getLogger(__name__)

# Anchors that locate each part inside a checkpoint, whatever its prefix.
VISION_ANCHORS = {"siglip": "embeddings.patch_embedding.weight", "aimv2": "embeddings.patch_embed.weight"}
LLM_ANCHOR = "embed_tokens.weight"
# Tensors a checkpoint may hold that Flash-VL does not use.
IGNORED_SUFFIXES = {
    "vision": ("head.",),  # SigLIP's MAP pooling head, AIMv2's attention-pooling head
}
IGNORED_TOP = ("text_model.", "logit_scale", "logit_bias")  # the text half of a full SiglipModel


class CheckpointError(FlashVLError):
    """A checkpoint does not match the preset (missing, unmatched or misshapen tensors)."""


@dataclass(frozen=True)
class CheckpointArgs:
    checkpoint: Path | None = None
    vision: Path | None = None
    llm: Path | None = None
    adapter: Path | None = None

    def pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple((k, str(v)) for k, v in (("checkpoint", self.checkpoint), ("vision", self.vision),
                                               ("llm", self.llm), ("adapter", self.adapter)) if v is not None)

    @property
    def tokenizer_dir(self) -> Path:
        return self.checkpoint if self.checkpoint is not None else self.llm


# ----------------------------------------------------------------------------- random


def random_weights(model: FlashVL, seed: int) -> None:
    """Seeded init: N(0, preset.init_std) for matrices, 0 for biases, 1 for norm scales."""
    std = model.preset.init_std
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.flat_parameters().items():
            if p.dim() == 1 and _is_norm(name):
                p.fill_(1.0)
            elif p.dim() == 1:
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def _is_norm(name: str) -> bool:
    return "norm" in name.split(".")[-2] or name.startswith("adapter.0.")


# ----------------------------------------------------------------------------- checkpoints


class TensorFolder:
    """The safetensors of one folder (or one file), opened lazily."""

    def __init__(self, path: Path):
        self.path = path
        files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
        if not path.exists():
            raise CheckpointError(f"{path}: not found; give a local folder with config.json and *.safetensors")
        if not files:
            raise CheckpointError(f"{path}: no *.safetensors files; give a Hugging Face-style folder "
                                  f"(config.json + model*.safetensors), downloads are never attempted")
        self.files = files
        self.where: dict[str, object] = {}  # tensor name -> open safetensors handle
        for f in files:
            try:
                h = safe_open(str(f), framework="pt")
            except Exception as e:  # safetensors raises its own types for corrupt headers
                raise CheckpointError(f"{f}: not a readable safetensors file ({e})") from None
            for k in h.keys():
                self.where[k] = h

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.where[key].get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        return self.where[key].get_tensor(key)

    def config(self) -> dict:
        cfg = self.path / "config.json" if self.path.is_dir() else None
        if cfg is None or not cfg.is_file():
            return {}
        try:
            return json.loads(cfg.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg}: not valid JSON ({e})") from None


def load_checkpoint(model: FlashVL, args: CheckpointArgs, progress=None) -> tuple[FileEntry, ...]:
    """Fill `model` from local checkpoints; return the files read, with sizes and sha256."""
    preset = model.preset
    if args.checkpoint is not None:
        if any(x is not None for x in (args.vision, args.llm, args.adapter)):
            raise CheckpointError("give either --checkpoint DIR (one combined folder) or --vision/--llm/--adapter, "
                                  "not both")
        folders = {"all": TensorFolder(args.checkpoint)}
        parts = {"vision": folders["all"], "adapter": folders["all"], "llm": folders["all"]}
    else:
        missing = [f"--{n}" for n in ("vision", "llm", "adapter") if getattr(args, n) is None]
        if missing:
            raise CheckpointError(f"separate checkpoints need --vision DIR --llm DIR --adapter FILE; "
                                  f"missing {' '.join(missing)}")
        parts = {"vision": TensorFolder(args.vision), "adapter": TensorFolder(args.adapter),
                 "llm": TensorFolder(args.llm)}
    check_configs(preset, parts)

    mapping: dict[str, tuple[TensorFolder, str]] = {}  # model key -> (folder, checkpoint key)
    problems: list[str] = []
    claimed: dict[int, set[str]] = {}
    prefixes = {"vision": _unique_prefix(parts["vision"], VISION_ANCHORS[preset.vision.family]),
                "adapter": _adapter_prefix(parts["adapter"], preset),
                "llm": _unique_prefix(parts["llm"], LLM_ANCHOR)}
    for part, prefix in prefixes.items():
        folder = parts[part]
        if prefix is None:
            problems.append(f"no {part} tensors found in {folder.path} ({_anchor_text(part, preset)})")
            continue
        _map_part(model, part, folder, prefix, mapping, problems)
        claimed.setdefault(id(folder), set()).update(ck for f, ck in mapping.values() if f is folder)

    for folder in {id(f): f for f in parts.values()}.values():
        used = claimed.get(id(folder), set())
        extra = sorted(k for k in folder.where if k not in used and not _ignorable(k, prefixes, preset))
        if extra:
            problems.append(f"unmatched in {folder.path}: {_list(extra)}")
    if problems:
        raise CheckpointError("checkpoint does not fit preset " + repr(preset.name) + ": " + "; ".join(problems))

    params = model.flat_parameters()
    with torch.no_grad():
        for i, (key, (folder, ck)) in enumerate(sorted(mapping.items())):
            params[key].copy_(folder.get(ck).to(torch.float32))
            if progress:
                progress(i + 1, len(mapping))
    _check_tied(model, parts["llm"], prefixes["llm"])
    files = sorted({f for folder in parts.values() for f in folder.files} |
                   {folder.path / "config.json" for folder in parts.values()
                    if folder.path.is_dir() and (folder.path / "config.json").is_file()})
    return tuple(file_entry(f, f.resolve()) for f in files)


def _map_part(model, part, folder, prefix, mapping, problems):
    ours = {"vision": "vision.", "adapter": "adapter.", "llm": "decoder."}[part]
    params = model.flat_parameters()
    missing, misshapen = [], []
    for key, p in params.items():
        if not key.startswith(ours) or key == "decoder.lm_head.weight":
            continue
        ck = prefix + key[len(ours):]
        if ck not in folder.where:
            missing.append(ck)
        elif folder.shape(ck) != tuple(p.shape):
            misshapen.append(f"{ck} {list(folder.shape(ck))} (expected {list(p.shape)})")
        else:
            mapping[key] = (folder, ck)
    if "decoder.lm_head.weight" in params:  # untied: lm_head sits beside the Qwen2Model prefix
        ck = _lm_head_key(prefix)
        if ck in folder.where:
            mapping["decoder.lm_head.weight"] = (folder, ck)
        else:
            missing.append(ck)
    if missing:
        problems.append(f"missing {part} tensors in {folder.path}: {_list(missing)}")
    if misshapen:
        problems.append(f"wrong shapes in {folder.path}: {_list(misshapen)}")


def _adapter_prefix(folder: TensorFolder, preset: Preset) -> str | None:
    """The prefix P with P0.weight [in], P1.weight [hidden, in], P3.weight [out, hidden]."""
    a = preset.adapter
    found = []
    for key in folder.where:
        if key.endswith("1.weight") and folder.shape(key) == (a.hidden_dim, a.in_dim):
            prefix = key[: -len("1.weight")]
            if prefix + "3.weight" in folder.where and prefix + "0.weight" in folder.where:
                found.append(prefix)
    return found[0] if len(found) == 1 else None


def _unique_prefix(folder: TensorFolder, anchor: str) -> str | None:
    hits = [k[: -len(anchor)] for k in folder.where if k.endswith(anchor)]
    if len(hits) > 1:
        raise CheckpointError(f"{folder.path}: several tensors end with '{anchor}' ({_list(hits)}); "
                              f"pass the parts separately with --vision/--llm/--adapter")
    return hits[0] if hits else None


def _lm_head_key(llm_prefix: str) -> str:
    root = llm_prefix[: -len("model.")] if llm_prefix.endswith("model.") else llm_prefix
    return root + "lm_head.weight"


def _ignorable(key: str, prefixes: dict[str, str | None], preset: Preset) -> bool:
    if key.startswith(IGNORED_TOP):
        return True
    vp, lp = prefixes["vision"], prefixes["llm"]
    if vp is not None and key.startswith(vp) and key[len(vp):].startswith(IGNORED_SUFFIXES["vision"]):
        return True
    # A tied checkpoint may still store lm_head (equal to the embeddings; checked in _check_tied).
    return lp is not None and preset.decoder.tied_embeddings and key == _lm_head_key(lp)


def _check_tied(model: FlashVL, folder: TensorFolder, prefix: str) -> None:
    if not model.preset.decoder.tied_embeddings:
        return
    ck = _lm_head_key(prefix)
    if ck in folder.where and not torch.equal(folder.get(ck).float(), model.decoder.embed_tokens.weight):
        raise CheckpointError(f"{folder.path}: {ck} differs from the input embeddings, but preset "
                              f"{model.preset.name!r} ties them; this checkpoint needs an untied preset")


def _anchor_text(part: str, preset: Preset) -> str:
    a = preset.adapter
    return {"vision": f"expected a tensor named '*{VISION_ANCHORS[preset.vision.family]}'",
            "llm": f"expected a tensor named '*{LLM_ANCHOR}'",
            "adapter": f"expected '*0.weight' [{a.in_dim}], '*1.weight' [{a.hidden_dim}, {a.in_dim}], "
                       f"'*3.weight' [{a.out_dim}, {a.hidden_dim}]"}[part]


def _list(items: list[str], most: int = 8) -> str:
    shown = ", ".join(items[:most])
    return shown + (f" ... and {len(items) - most} more" if len(items) > most else "")


# ----------------------------------------------------------------------------- configs


def check_configs(preset: Preset, parts: dict[str, TensorFolder]) -> None:
    """Compare what the checkpoints' config.json files say with the preset; list every mismatch."""
    v, d = preset.vision, preset.decoder
    expect_vision = {"hidden_size": v.width, "num_hidden_layers": v.n_layers, "num_attention_heads": v.n_heads,
                     "intermediate_size": v.mlp_dim, "patch_size": v.patch_size, "image_size": v.image_size}
    expect_llm = {"hidden_size": d.dim, "num_hidden_layers": d.n_layers, "num_attention_heads": d.n_heads,
                  "num_key_value_heads": d.n_kv_heads, "intermediate_size": d.hidden_dim,
                  "vocab_size": d.vocab_size, "rope_theta": d.rope_theta, "tie_word_embeddings": d.tied_embeddings}
    problems = []
    for part, expect, keys in (("vision", expect_vision, ("vision_config",)),
                               ("llm", expect_llm, ("llm_config", "text_config"))):
        folder = parts[part]
        cfg = folder.config()
        for k in keys:  # combined (InternVL/LLaVA-style) configs nest the parts
            if isinstance(cfg.get(k), dict):
                cfg = cfg[k]
                break
        for name, want in expect.items():
            got = _config_value(cfg, name)
            if got is not None and got != want:
                problems.append(f"{part} {name}={got} (preset has {want})")
    if problems:
        raise CheckpointError(f"checkpoint config.json does not match preset {preset.name!r}: "
                              + ", ".join(problems) + "; choose the preset that matches the checkpoint")


def _config_value(cfg: dict, name: str):
    if name == "rope_theta" and name not in cfg and isinstance(cfg.get("rope_parameters"), dict):
        return cfg["rope_parameters"].get("rope_theta")
    return cfg.get(name)
