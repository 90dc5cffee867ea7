"""Build an engine folder: preset + weights -> vision.onnx, decoder.onnx, tokenizer.json, manifest.json.

The folder is built beside `out` and swapped in whole when complete (export.atomic).

`build_model` is shared with `export.reference`, so the reference runs on exactly the
weights the folder was exported from (the manifest's `source` says which).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
import tokenizers
import torch

from calib.calibrate import calibrate_into
from export import progress
from export.atomic import building
from export.fused_decoder import export_fused_decoder
from export.graphs import stamp_record
from export.model import FlashVL
from export.onnx_export import OPSET, export_decoder, export_embeddings, export_vision
from export.precision import PrecisionPlan, reduce_decoder, reduce_vision_fp16
from export.presets import Preset
from export.tokenizer import build_chatml_tokenizer, token_spec_from_tokenizer
from export.weights import CheckpointArgs, CheckpointError, load_checkpoint, random_weights
from runtime.engine_check import RECORD_KEY, model_record
from runtime.files import file_entry
from runtime.errors import EngineError
from runtime.manifest import MAX_BATCH, SCHEMA_VERSION, GraphsSpec, Manifest, SourceSpec, save_manifest

EXPORTER_VERSION = "0.1.0"
TOKENIZER_FILE = "tokenizer.json"
EMBEDDINGS_FILE = "embed_tokens.npy"
DEFAULT_MAX_BATCH = 8  # decoder cache slots the runtime opens by default (FlashVL.load(max_batch=...) lowers it)


@dataclass(frozen=True)
class WeightSource:
    """--random-weights --seed N, or local checkpoints."""

    seed: int | None = None
    checkpoint: CheckpointArgs | None = None


def load_tokenizer(preset: Preset, source: WeightSource) -> tokenizers.Tokenizer:
    if source.checkpoint is None:
        return build_chatml_tokenizer(preset.tokenizer_vocab)
    for name, path in source.checkpoint.pairs():
        if not Path(path).exists():
            raise CheckpointError(f"--{name} {path}: not found; give a local folder (config.json + *.safetensors), "
                                  f"downloads are never attempted")
    folder = source.checkpoint.tokenizer_dir
    if folder is None:
        raise CheckpointError("separate checkpoints need --llm DIR (it holds tokenizer.json)")
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; the LLM checkpoint folder must hold the model's tokenizer.json "
                              f"(Hugging Face `tokenizers` format)")
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for bad JSON
        raise CheckpointError(f"{path}: not a readable tokenizer.json ({e})") from None


def build_model(preset: Preset, source: WeightSource, tokenizer: tokenizers.Tokenizer):
    """The PyTorch model with its weights, and the manifest's SourceSpec describing them."""
    tokens = token_spec_from_tokenizer(tokenizer)
    if tokenizer.get_vocab_size(with_added_tokens=True) > preset.decoder.vocab_size:
        raise CheckpointError(f"tokenizer has {tokenizer.get_vocab_size()} tokens, more than the decoder's "
                              f"vocab_size {preset.decoder.vocab_size} (preset {preset.name!r})")
    with torch.device("meta"):  # no default init: every tensor is written below (2B values at full size)
        model = FlashVL(preset)
    model = model.to_empty(device="cpu").eval()
    if source.checkpoint is None:
        with progress.step(f"random weights, seed {source.seed}"):
            random_weights(model, source.seed)
        spec = SourceSpec(kind="random", seed=source.seed, checkpoint=(), checkpoint_args=())
    else:
        with progress.step("loading checkpoint tensors"):
            files = load_checkpoint(model, source.checkpoint, progress.counter("tensors"))
        spec = SourceSpec(kind="checkpoint", seed=-1, checkpoint=files,
                          checkpoint_args=source.checkpoint.pairs())
    return model, tokens, spec


def export_engine(preset: Preset, source: WeightSource, out: Path, plan: PrecisionPlan = PrecisionPlan(),
                  max_batch: int = DEFAULT_MAX_BATCH) -> Manifest:
    """Write the engine folder `out` whole, replacing an engine folder there only once the new one is
    complete and verified; on any failure or kill `out` is left as it was (export.atomic)."""
    for name in ("torch.onnx", "torch.onnx._internal.exporter._registration"):
        logging.getLogger(name).setLevel(logging.ERROR)
    inputs = {f"--{name}": Path(path) for name, path in (source.checkpoint.pairs() if source.checkpoint else ())}
    if plan.vision == "int8":
        inputs["--calib-images"] = Path(plan.calib.images)
    with building(Path(out), inputs) as work:
        manifest = write_engine(preset, source, work, plan, max_batch)
    return manifest


def write_engine(preset: Preset, source: WeightSource, out: Path, plan: PrecisionPlan,
                 max_batch: int = DEFAULT_MAX_BATCH) -> Manifest:
    """Fill the empty folder `out`, manifest.json last."""
    tokenizer = load_tokenizer(preset, source)
    model, tokens, source_spec = build_model(preset, source, tokenizer)
    tokenizer.save(str(out / TOKENIZER_FILE))

    with progress.step("exporting vision.onnx (vision tower + adapter)"):
        vision = export_vision(model, out / "vision.onnx")
    if plan.flavour == "onnxruntime":
        with progress.step("writing decoder.onnx (ONNX Runtime's fused ops)"):
            decoder = export_fused_decoder(model, out / "decoder.onnx")
    else:
        with progress.step("exporting decoder.onnx"):
            decoder = export_decoder(model, out / "decoder.onnx")
    with progress.step("writing embed_tokens.npy"):
        embeddings = export_embeddings(model, out / EMBEDDINGS_FILE)
    del model

    if plan.decoder != "fp32":
        with progress.step(f"decoder.onnx -> {plan.describe().split('decoder ')[1]}"):
            decoder = reduce_decoder(out / "decoder.onnx", plan, preset.decoder.n_layers)
    decoder = replace(decoder, max_batch=max_batch)  # both flavours carry ragged batches (runtime.engine)
    if plan.vision == "fp16":
        with progress.step("vision.onnx -> fp16"):
            vision = reduce_vision_fp16(out / "vision.onnx")

    manifest = Manifest(
        schema_version=SCHEMA_VERSION, model=preset.model, preset=preset.name,
        exporter=f"flash-vl-export {EXPORTER_VERSION}, torch {torch.__version__}, onnx {onnx.__version__}, "
                 f"opset {OPSET}",
        vision=preset.vision, adapter=preset.adapter, decoder=preset.decoder, tokens=tokens, chat=preset.chat,
        preprocess=preset.preprocess, graphs=GraphsSpec(vision=vision, decoder=decoder), embeddings=embeddings,
        tokenizer=TOKENIZER_FILE,
        source=source_spec, tiling=preset.tiling)
    for role, graph in (("vision", vision), ("decoder", decoder)):  # the numbers each was exported with
        stamp_record(out / graph.file, RECORD_KEY, model_record(manifest, role))  # (runtime.engine_check)
    names = ["vision.onnx", "vision.onnx.data", "decoder.onnx", "decoder.onnx.data", EMBEDDINGS_FILE, TOKENIZER_FILE]
    with progress.step("hashing files"):
        manifest = replace(manifest, files=tuple(file_entry(out / n, n) for n in names))
    if plan.vision == "int8":
        manifest = calibrate_into(out, manifest, plan.calib)
    save_manifest(out, manifest)  # written last, once: its presence means complete
    return manifest


def check_max_batch(max_batch) -> int:
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or not 1 <= max_batch <= MAX_BATCH:
        raise EngineError(f"--max-batch must be an integer in 1..{MAX_BATCH} (sequences one decoder call carries), "
                          f"got {max_batch!r}")
    return max_batch


def with_max_seq_len(preset: Preset, max_seq_len: int | None) -> Preset:
    if max_seq_len is None:
        return preset
    return replace(preset, decoder=replace(preset.decoder, max_seq_len=max_seq_len))
