"""`python -m export.reference`: the PyTorch model on the very weights an engine folder came from.

    python -m export.reference --engine engines/tiny --image samples/shapes.png \
        --prompt "Describe the image." --max-new-tokens 32 --json

The manifest's `source` says how to rebuild them: preset + seed for random weights, or
the checkpoint paths, whose sizes and sha256 must still match.  Image preprocessing and
the chat template are the runtime's own functions (one truth on both sides); the model,
the KV cache and greedy decoding are PyTorch.  The JSON has the runtime's keys.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # before the imports that need torch: one line, not a traceback
    from runtime.extras import exit_unless_installed

    exit_unless_installed("export", "python -m export.reference")

import numpy as np
import torch

from export.build import WeightSource, build_model, load_tokenizer, with_max_seq_len
from export.presets import get_preset
from export.weights import CheckpointArgs, CheckpointError
from runtime.chat import ChatTokenizer
from runtime.cli_output import error_line
from runtime.cli_parser import CliParser
from runtime.embedding import splice_image
from runtime.errors import FlashVLError
from runtime.files import sha256_of
from runtime.generate import Timings, check_prompt_fits
from runtime.api import vision_pixels
from runtime.image import load_image
from runtime.manifest import Manifest, load_manifest
from runtime.tiling import gather_tokens


def rebuild(manifest: Manifest):
    """The PyTorch model of the manifest, with the weights it was exported from."""
    preset = with_max_seq_len(get_preset(manifest.preset), manifest.decoder.max_seq_len)  # as exported
    for part in ("vision", "adapter", "decoder", "preprocess", "tiling"):
        if getattr(preset, part) != getattr(manifest, part):
            raise FlashVLError(f"manifest {part} differs from preset {preset.name!r} of this exporter; "
                               f"re-export the engine folder with this version")
    src = manifest.source
    if src is None:
        raise FlashVLError("manifest has no weight source; re-export the engine folder")
    if src.kind == "random":
        source = WeightSource(seed=src.seed)
    else:
        for f in src.checkpoint:
            p = Path(f.path)
            if not p.is_file() or p.stat().st_size != f.bytes or sha256_of(p) != f.sha256:
                raise CheckpointError(f"{p}: missing or changed since the engine folder was exported; the "
                                      f"reference needs the same checkpoint")
        source = WeightSource(checkpoint=CheckpointArgs(**{k: Path(v) for k, v in src.checkpoint_args}))
    model, tokens, _ = build_model(preset, source, load_tokenizer(preset, source))
    if tokens != manifest.tokens:
        raise FlashVLError("tokenizer special tokens differ from the manifest's; re-export the engine folder")
    return model


@torch.no_grad()
def greedy(model, prompt_ids: np.ndarray, embeds: torch.Tensor | None, image_pad_id: int, max_new_tokens: int,
           stop_ids, max_seq_len, timings: Timings, t_start: float):
    """Greedy decoding with a torch KV cache: prefill, then one token per step."""
    dec = model.decoder
    table = dec.embed_tokens.weight.numpy()  # [V, D]
    image = None if embeds is None else embeds[0].numpy()
    x = torch.from_numpy(splice_image(table, prompt_ids, image, image_pad_id))[None]  # [1, P, D]
    past = dec.empty_past(1)
    pos, out = 0, []
    steps = min(max_new_tokens, max_seq_len - len(prompt_ids) + 1)
    while True:
        t0 = time.perf_counter()
        positions = torch.arange(pos, pos + x.shape[1])[None, :]  # [1, S]
        logits, *new = dec(x, positions, *past)
        past = [torch.cat((p, n), dim=0) for p, n in zip(past, new)]  # [pos+S, 1, Hkv, hd]
        token = int(torch.argmax(logits[0]))
        if pos == 0:
            timings.prefill_ms = (time.perf_counter() - t0) * 1e3
            timings.ttft_ms = (time.perf_counter() - t_start) * 1e3
        else:
            timings.decode_ms += (time.perf_counter() - t0) * 1e3
            timings.decode_steps += 1
        pos += x.shape[1]
        out.append(token)
        if token in stop_ids:
            return out, "stop"
        if len(out) >= steps:
            return out, "length"
        x = dec.embed_tokens(torch.tensor([[token]]))  # [1, 1, D]


def run(engine: Path, image: Path | None, prompt: str, max_new_tokens: int, system: str | None,
        iss: bool = True) -> dict:
    """The runtime's JSON (`runtime.api.Result.as_dict`), computed by PyTorch."""
    manifest = load_manifest(engine)
    model = rebuild(manifest)
    tok = ChatTokenizer.load(engine / manifest.tokenizer, manifest.tokens, manifest.chat, manifest.decoder.vocab_size)
    timings = Timings()
    t_start = time.perf_counter()
    embeds, layout = None, None
    if image is not None:
        rgb = load_image(image, background=manifest.preprocess.alpha_background)  # [H, W, 3]
        pixels, layout = vision_pixels(rgb, manifest, iss)  # the runtime's own geometry: [tiles, 3, S, S]
        t0 = time.perf_counter()
        with torch.no_grad():
            embeds = model.vision_graph(torch.from_numpy(pixels))  # [tiles, n*n, dim]
        if layout is not None:
            embeds = torch.from_numpy(gather_tokens(embeds.numpy(), layout))[None]  # [1, image_tokens, dim]
        timings.preprocess_ms, timings.vision_ms = (t0 - t_start) * 1e3, (time.perf_counter() - t0) * 1e3
    image_tokens = 0 if embeds is None else embeds.shape[1]
    ids = tok.encode_prompt(prompt, image_tokens=image_tokens, system=system)
    check_prompt_fits(len(ids), image_tokens, manifest.decoder.max_seq_len)
    stops = manifest.tokens.stop_ids
    tokens, reason = greedy(model, ids, embeds, manifest.tokens.image_pad_id, max_new_tokens, stops,
                            manifest.decoder.max_seq_len, timings, t_start)
    out = [t for t in tokens if t not in stops]
    return {"text": tok.decode(out), "token_ids": out, "image_tokens": image_tokens, "prompt_tokens": len(ids),
            "finish_reason": reason, "timings": timings.as_dict(),
            "tiling": None if layout is None else layout.as_dict()}


def main(argv=None) -> int:
    ap = CliParser(prog="python -m export.reference", description=__doc__)
    ap.add_argument("--engine", required=True, type=Path)
    ap.add_argument("--image", type=Path)
    ap.add_argument("--prompt", default="Describe the image.")
    ap.add_argument("--system", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--no-iss", action="store_true", help="dynamic engines: plain dynamic cropping")
    ap.add_argument("--json", action="store_true", help="print one JSON object (the runtime's keys)")
    args = ap.parse_args(argv)
    try:
        result = run(args.engine, args.image, args.prompt, args.max_new_tokens, args.system, iss=not args.no_iss)
    except FlashVLError as e:
        print(error_line(e), file=sys.stderr)
        return 2
    print(json.dumps(result, ensure_ascii=False) if args.json else result["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
