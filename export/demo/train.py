"""Train the demo model on synthetic scenes, on the CPU, and write a Hugging Face-style checkpoint.

    train(TrainConfig(out=DIR, seed=0, steps=..., ...)) -> the training record (also in config.json)

1. A tokenizer learnt from the scene language (export.demo.scenes.corpus), with Qwen2's
   ChatML and vision special tokens, so prompts go through the runtime's real chat template.
2. A pool of scenes drawn with OpenCV and resized with the runtime's own resampler
   (runtime.preprocess.resize_pil_bicubic): the model trains on the pixels the runtime will feed it.
3. Each example is one user turn built by runtime.chat (system, image pads, prompt), then the
   answer and <|im_end|>; the loss is on the answer and <|im_end|> only.  Each image of a step
   is asked for its caption and `turns - 1` questions of uniformly drawn kinds; the prefix the
   turns share (system, user, image) runs once per image and the turns continue from its KV
   cache, as the runtime's decoder does (shared_prefix_logits).
4. AdamW with warm-up and cosine decay; the vision tower waits `vision_frozen_steps`, then
   trains at `vision_lr_scale` of the rate (vision_scale).  The forward is export.model's own
   modules (the exported graphs run the same ones).
5. The checkpoint: model.safetensors (InternVL-style names: vision_model.*, mlp1.*,
   language_model.model.*), config.json (vision_config, llm_config, and the training record:
   command, every setting, the final loss, held-out accuracy, torch version), tokenizer.json.
   `python -m export --preset demo --checkpoint DIR` loads it like any other checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch.nn import functional as F

from export import progress, reference
from export.decoder import rope_cos_sin
from export.demo import scenes
from export.demo.accuracy import MAX_NEW_TOKENS
from export.model import FlashVL
from export.peers.weights import qwen2_config
from export.presets import DEFAULT_SYSTEM, Preset, get_preset
from export.tokenizer import IM_END, IM_START, build_chatml_tokenizer, token_spec_from_tokenizer
from export.weights import random_weights
from runtime.chat import ChatTokenizer
from runtime.errors import FlashVLError
from runtime.generate import Timings
from runtime.preprocess import resize_pil_bicubic

PRESET = "demo"


@dataclass(frozen=True)
class TrainConfig:
    out: Path
    seed: int = 0
    steps: int = 3700
    batch: int = 16  # images per step
    turns: int = 4  # prompts per image: its caption and 3 questions (the prompt prefix runs once)
    pool: int = 8000  # distinct training scenes (each step draws a batch from them, with fresh questions)
    lr: float = 1e-3
    warmup: int = 50
    vision_frozen_steps: int = 800  # see vision_scale
    vision_lr_scale: float = 0.3
    weight_decay: float = 0.01
    threads: int = 2
    eval_scenes: int = 100

    def __post_init__(self):
        least = {"steps": 1, "batch": 1, "turns": 1, "pool": 1, "threads": 1, "eval_scenes": 1, "seed": 0,
                 "vision_frozen_steps": 0, "warmup": 1}
        for name, low in least.items():
            if getattr(self, name) < low:
                raise FlashVLError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(self, name)}")


# ----------------------------------------------------------------------------- language


def demo_tokenizer() -> Tokenizer:
    """The scene language's BPE, with Qwen2's special tokens (chat roles and the system prompt included)."""
    text = scenes.corpus(2000, seed=0) + [f"{IM_START}system\n{DEFAULT_SYSTEM}{IM_END}"] * 20
    text += [f"{role}\n" for role in ("system", "user", "assistant")] * 20
    return build_chatml_tokenizer(get_preset(PRESET).tokenizer_vocab, text)


class Examples:
    """Scenes -> (prompt ids + answer ids + <|im_end|>, loss mask), through the runtime's chat template."""

    def __init__(self, tok: Tokenizer, preset: Preset):
        self.tokens = token_spec_from_tokenizer(tok)
        self.chat = ChatTokenizer(tok, self.tokens, preset.chat, "demo tokenizer")
        self.image_tokens = preset.adapter.image_tokens
        self._tok = tok

    def encode(self, prompt: str, answer: str) -> tuple[list[int], int]:
        """The ids of one turn and its answer, and where the answer starts."""
        prompt_ids = self.chat.encode_prompt(prompt, self.image_tokens).tolist()
        answer_ids = self._tok.encode(answer, add_special_tokens=False).ids + [self.tokens.im_end_id]
        return prompt_ids + answer_ids, len(prompt_ids)

    def batch(self, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The turns of one batch, split where they stop being equal (system, user, image block):
        prefix [L], then continuations [N, T] (right-padded) and loss targets [N, T] (-100 outside
        the answers; continuation position t predicts t+1)."""
        encoded = [self.encode(p, a) for p, a in pairs]
        first = encoded[0][0]
        common = min(start for _, start in encoded) - 1  # the last prompt id predicts the answer's first
        for row, _ in encoded[1:]:
            common = next((i for i in range(common) if row[i] != first[i]), common)
        assert common > first.index(self.tokens.image_end_id), "the image block must be in the shared prefix"
        t = max(len(row) for row, _ in encoded) - common
        conts = torch.full((len(pairs), t), self.tokens.eos_id, dtype=torch.int64)  # [N, T]
        targets = torch.full((len(pairs), t), -100, dtype=torch.int64)  # [N, T]
        for n, (row, start) in enumerate(encoded):
            conts[n, : len(row) - common] = torch.tensor(row[common:])
            a = start - common  # the answer's first index in the continuation (>= 1)
            targets[n, a - 1 : len(row) - common - 1] = torch.tensor(row[start:])
        return torch.tensor(first[:common]), conts, targets


# ----------------------------------------------------------------------------- pixels


def scene_pixels(bgr: np.ndarray, preset: Preset) -> np.ndarray:
    """BGR uint8 [H, W, 3] -> uint8 [S, S, 3] RGB at the model's size, by the runtime's resampler."""
    p = preset.preprocess
    return resize_pil_bicubic(np.ascontiguousarray(bgr[:, :, ::-1]), p.height, p.width)


def normalize(rgb: torch.Tensor, preset: Preset) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> float32 [B, 3, S, S], as runtime.preprocess.preprocess."""
    p = preset.preprocess
    x = rgb.permute(0, 3, 1, 2).float() * p.rescale  # [B, 3, S, S]
    mean = torch.tensor(p.mean, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(p.std, dtype=torch.float32)[None, :, None, None]
    return (x - mean) / std


def draw_pool(n: int, seed: int, preset: Preset) -> tuple[list[scenes.Scene], torch.Tensor]:
    """n scenes and their pixels [n, S, S, 3] uint8."""
    rng = np.random.default_rng(seed)
    pool, pixels = [], np.empty((n, preset.preprocess.height, preset.preprocess.width, 3), np.uint8)
    for i in range(n):
        scene = scenes.sample_scene(rng)
        pool.append(scene)
        pixels[i] = scene_pixels(scenes.draw(scene, seed=int(rng.integers(2**31))), preset)
    return pool, torch.from_numpy(pixels)


# ----------------------------------------------------------------------------- model


def shared_prefix_logits(model: FlashVL, image: torch.Tensor, prefix: torch.Tensor, conts: torch.Tensor,
                         image_pad_id: int) -> torch.Tensor:
    """Training's forward: each image's prefix (system, user, image) runs once, then its K turns
    (N = B*K, image-major) continue from that KV cache, as the exported decoder does with `past`.

    image [B, image_tokens, D] (the vision graph's output), prefix [L], conts [N, T] -> logits [N, T, V]
    """
    dec, spec = model.decoder, model.decoder.spec
    assert spec.tied_embeddings, "the demo preset ties its embeddings: the logits use embed_tokens"
    b, n, t, el = image.shape[0], conts.shape[0], conts.shape[1], prefix.shape[0]
    ids = prefix[None].expand(b, el)  # [B, L]
    x = dec.embed_tokens(ids).masked_scatter((ids == image_pad_id)[..., None], image)  # [B, L, D]
    cos, sin = rope_cos_sin(torch.arange(el)[None].expand(b, el), spec.head_dim, spec.rope_theta)
    empty = torch.zeros(0, b, spec.n_kv_heads, spec.head_dim)  # [0, B, Hkv, hd]
    causal = torch.ones(el, el, dtype=torch.bool).tril()  # [L, L]
    past = []
    for layer in dec.layers:
        x, k, v = layer(x, cos, sin, causal, empty, empty)  # [B, L, D]; k, v [L, B, Hkv, hd]
        past.append((k.repeat_interleave(n // b, dim=1), v.repeat_interleave(n // b, dim=1)))  # [L, N, Hkv, hd]

    y = dec.embed_tokens(conts)  # [N, T, D]
    cos, sin = rope_cos_sin(torch.arange(el, el + t)[None].expand(n, t), spec.head_dim, spec.rope_theta)
    mask = torch.arange(el + t)[None, :] <= torch.arange(el, el + t)[:, None]  # [T, L+T]
    for layer, (k, v) in zip(dec.layers, past):
        y, _, _ = layer(y, cos, sin, mask, k, v)  # [N, T, D]
    return F.linear(dec.norm(y), dec.embed_tokens.weight)  # [N, T, V]


@torch.no_grad()
def image_embeds(model: FlashVL, bgr: np.ndarray, preset: Preset) -> torch.Tensor:
    """BGR uint8 [H, W, 3] -> the PyTorch vision graph's image embeddings [1, image_tokens, D]."""
    return model.vision_graph(normalize(torch.from_numpy(scene_pixels(bgr, preset))[None], preset))


def greedy_ids(model: FlashVL, examples: Examples, embeds: torch.Tensor, prompt: str,
               max_new_tokens: int = MAX_NEW_TOKENS) -> list[int]:
    """Greedy ids of the PyTorch model for one image's embeddings [1, image_tokens, D], the stop token
    excluded: export.reference's KV-cached loop over the decoder module the graphs are exported from."""
    t = examples.tokens
    ids = examples.chat.encode_prompt(prompt, examples.image_tokens)  # [P]
    out, _ = reference.greedy(model, ids, embeds, t.image_pad_id, max_new_tokens, t.stop_ids,
                              model.preset.decoder.max_seq_len, Timings(), time.perf_counter())
    return [i for i in out if i not in t.stop_ids]


def held_out_accuracy(model: FlashVL, examples: Examples, preset: Preset, n: int) -> dict[str, float]:
    """Exact-match caption and question accuracy of the PyTorch model on n held-out scenes."""
    def says(embeds, prompt: str, expected: str) -> bool:
        return examples.chat.decode(greedy_ids(model, examples, embeds, prompt)) == expected

    hits = {"caption": 0, "questions": 0}
    cases = scenes.held_out(n)
    for case in cases:
        embeds = image_embeds(model, case.image, preset)  # the vision graph once, three prompts
        hits["caption"] += says(embeds, scenes.CAPTION_PROMPT, case.caption)
        hits["questions"] += sum(says(embeds, q, a) for q, a in case.questions)
    return {"caption": hits["caption"] / n, "questions": hits["questions"] / sum(len(c.questions) for c in cases)}


# ----------------------------------------------------------------------------- the run


def vision_scale(step: int, cfg: TrainConfig) -> float:
    """The vision tower waits while the adapter and decoder learn to read its (random) features,
    then trains more gently: trained at full rate from the start, its features collapsed
    (a linear probe of object identity fell from 75% at init to 46%)."""
    return 0.0 if step < cfg.vision_frozen_steps else cfg.vision_lr_scale


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    done = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done)))


def train(cfg: TrainConfig, command: str = "") -> dict:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)  # a bad --out fails now, not after the training
    preset = get_preset(PRESET)
    tok = demo_tokenizer()
    examples = Examples(tok, preset)
    t0 = time.perf_counter()
    pool, pool_pixels = draw_pool(cfg.pool, cfg.seed, preset)
    progress.say(f"drew {cfg.pool} scenes in {time.perf_counter() - t0:.1f}s")

    model = FlashVL(preset)
    random_weights(model, cfg.seed)
    model.train()
    groups = []  # (vision?, weight decay?)
    for vision in (True, False):
        for decay in (True, False):
            params = [p for n, p in model.flat_parameters().items()
                      if n.startswith("vision.") == vision and (p.dim() >= 2) == decay]
            groups.append({"params": params, "weight_decay": cfg.weight_decay if decay else 0.0, "vision": vision})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))
    rng = np.random.default_rng(cfg.seed + 1)
    losses: list[float] = []
    t1 = time.perf_counter()
    for step in range(cfg.steps):
        idx = rng.integers(cfg.pool, size=cfg.batch)  # [B] images, each with its caption and K-1 questions
        pairs = [pair for i in idx for pair in
                 [(scenes.CAPTION_PROMPT, scenes.caption(pool[i]))] +
                 [scenes.pick_question(pool[i], rng) for _ in range(cfg.turns - 1)]]
        prefix, conts, targets = examples.batch(pairs)  # [L], [B*K, T], [B*K, T]
        pixels = normalize(pool_pixels[idx], preset)  # [B, 3, S, S]
        with torch.set_grad_enabled(step >= cfg.vision_frozen_steps):
            features = model.vision_graph.vision(pixels)  # [B, n_patches, width]
        image = model.vision_graph.adapter(features)  # [B, image_tokens, D]
        logits = shared_prefix_logits(model, image, prefix, conts, examples.tokens.image_pad_id)  # [B*K, T, V]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg) * (vision_scale(step, cfg) if group["vision"] else 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            progress.say(f"step {step + 1}/{cfg.steps}  loss {np.mean(losses[-100:]):.4f}  "
                         f"lr {lr_at(step, cfg):.2e}  {time.perf_counter() - t1:.0f}s")
    train_s = time.perf_counter() - t1

    model.eval()
    accuracy = held_out_accuracy(model, examples, preset, cfg.eval_scenes)
    progress.say(f"held-out, PyTorch, {cfg.eval_scenes} scenes: caption {accuracy['caption']:.1%}, "
                 f"questions {accuracy['questions']:.1%}")
    record = {"command": command, "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
              "torch": torch.__version__, "train_seconds": round(train_s, 1),
              "draw_seconds": round(t1 - t0, 1), "final_loss": round(float(np.mean(losses[-100:])), 5),
              "held_out_pytorch": accuracy}
    write_checkpoint(model, tok, cfg.out, record)
    return record


def write_checkpoint(model: FlashVL, tok: Tokenizer, out: Path, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rename = {"vision.": "vision_model.", "adapter.": "mlp1.", "decoder.": "language_model.model."}
    tensors = {}
    for name, p in model.flat_parameters().items():
        prefix = next(k for k in rename if name.startswith(k))
        tensors[rename[prefix] + name[len(prefix):]] = p.detach().contiguous().clone()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    tok.save(str(out / "tokenizer.json"))
    v, d = model.preset.vision, model.preset.decoder
    config = {
        "architectures": ["FlashVLDemo"],
        "flash_vl_preset": PRESET,
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": v.width,
                          "num_hidden_layers": v.n_layers, "num_attention_heads": v.n_heads,
                          "intermediate_size": v.mlp_dim, "patch_size": v.patch_size, "image_size": v.image_size,
                          "layer_norm_eps": v.norm_eps, "hidden_act": "gelu_pytorch_tanh"},
        "llm_config": qwen2_config(d, eos_id=token_spec_from_tokenizer(tok).stop_ids[0]),
        "training": record,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
