"""The manifest agrees with itself and with the graphs it describes; nothing in it is taken on trust.

    check_consistent(manifest)                 pure; load_manifest calls it: the sizes that must agree
                                               across specs, each graph's I/O table against the model's numbers,
                                               paths inside the folder, a files list that covers every file read
    model_record(manifest, role) -> str        the model facts the exporter stamps into the vision or the
                                               decoder graph (ONNX metadata_props[RECORD_KEY]), canonical JSON
    check_graph_records(engine_dir, manifest)  FlashVL.load calls it after the hash check: every graph's record
                                               equals the manifest's facts, and no graph's weights file is unlisted

Together with the loaded graph's own I/O (runtime.backend.check_graph_io) and the tokenizer's ids
(runtime.chat), a manifest.json edited by hand, or copied from another export, is refused at load
with one line naming the field and both values, instead of an ONNX Runtime traceback mid-request
or a model that silently decodes past its stop token.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from runtime import graph_io as io
from runtime.errors import EngineError
from runtime.onnx_meta import read_metadata

if TYPE_CHECKING:  # runtime.manifest calls check_consistent from load_manifest
    from runtime.manifest import Manifest

log = logging.getLogger(__name__)

RECORD_KEY = "flash_vl.model"
# The manifest fields each graph carries: the ones that describe what it computes, or (names) which export it is.
RECORD_FIELDS = {"vision": ("model", "preset", "vision", "adapter", "preprocess", "tiling"),
                 "decoder": ("model", "preset", "decoder", "tokens", "chat")}


# ----------------------------------------------------------------------------- the manifest alone


def check_consistent(m: Manifest) -> None:
    _check_positive(m)
    _check_sizes(m)
    _check_tokens(m)
    for role, spec in (("vision", m.graphs.vision), ("vision_fp32", m.graphs.vision_fp32)):
        if spec is not None:
            _check_vision_io(m, role, spec)
    _check_decoder_io(m)
    _check_paths(m)
    _check_files_listed(m)


def _check_positive(m: Manifest) -> None:
    """Every size and count is at least 1 (a 0 would divide by zero below, or build an empty graph)."""
    for name in ("vision", "adapter", "decoder", "preprocess", "tiling"):
        spec = getattr(m, name)
        if spec is None:
            continue
        for f in dataclasses.fields(spec):
            value = getattr(spec, f.name)  # by its type, not the field's: bools (tied_embeddings) are not sizes
            if type(value) is int and value < 1 and (name, f.name) != ("tiling", "iss_margin"):
                raise EngineError(f"{name}.{f.name} must be at least 1, got {value}")
            if type(value) is float and value <= 0:
                raise EngineError(f"{name}.{f.name} must be above 0, got {value}")
    if min(m.preprocess.std) <= 0:
        raise EngineError(f"preprocess.std must be above 0 in every channel, got {list(m.preprocess.std)}")


def _agree(what: str, got, want, because: str) -> None:
    if got != want:
        raise EngineError(f"{what} is {got}, but {because} gives {want}")


def _check_sizes(m: Manifest) -> None:
    v, a, d, p, t = m.vision, m.adapter, m.decoder, m.preprocess, m.tiling
    f = a.shuffle_factor
    for name, got in (("preprocess.height", p.height), ("preprocess.width", p.width)):
        _agree(name, got, v.image_size, "vision.image_size (the tower's square input)")
    if v.grid % f:
        raise EngineError(f"vision: {v.grid} patches per side (image_size {v.image_size} / patch_size "
                          f"{v.patch_size}) do not divide by adapter.shuffle_factor {f}")
    _agree("adapter.image_tokens", a.image_tokens, (v.grid // f) ** 2,
           f"(image_size {v.image_size} / patch_size {v.patch_size} / shuffle_factor {f})^2")
    _agree("adapter.in_dim", a.in_dim, v.width * f * f, f"vision.width {v.width} x shuffle_factor {f}^2")
    _agree("adapter.out_dim", a.out_dim, d.dim, "decoder.dim")
    _agree("decoder.n_heads x head_dim", d.n_heads * d.head_dim, d.dim, "decoder.dim (Qwen2's attention width)")
    if v.width % v.n_heads:
        raise EngineError(f"vision.width {v.width} is not a multiple of vision.n_heads {v.n_heads}")
    if d.max_seq_len < 2:
        raise EngineError(f"decoder.max_seq_len must be at least 2, got {d.max_seq_len}")
    _agree("embeddings.shape", list(m.embeddings.shape), [d.vocab_size, d.dim], "[decoder.vocab_size, decoder.dim]")
    if t is not None:
        _agree("tiling.cell_px", t.cell_px, v.patch_size * f, "vision.patch_size x adapter.shuffle_factor")
        _agree("tiling.cells_per_side", t.cells_per_side, v.grid // f, "vision patches per side / shuffle_factor")


def _check_tokens(m: Manifest) -> None:
    t, vocab = m.tokens, m.decoder.vocab_size
    ids = {n: getattr(t, f"{n}_id") for n in ("im_start", "im_end", "image_start", "image_pad", "image_end", "eos")}
    for name, i in ids.items():
        if not 0 <= i < vocab:
            raise EngineError(f"tokens.{name}_id {i} is outside the decoder's vocabulary 0..{vocab - 1}")
    if len(set(ids.values())) != len(ids):
        raise EngineError(f"tokens: two special tokens share an id ({ids})")
    if t.im_end_id not in t.stop_ids:
        raise EngineError(f"tokens.stop_ids {list(t.stop_ids)} lack im_end_id {t.im_end_id}: generation would run "
                          f"past the end of the assistant's turn")


def _dims_agree(role: str, spec, tensor: str, want: list) -> None:
    """The I/O table's fixed dims of `tensor` against the model's numbers (None: a dim left free)."""
    got = spec.input(tensor) if tensor in {s.name for s in spec.inputs} else spec.output(tensor)
    bad = len(got.shape) != len(want) or any(w is not None and g != w for g, w in zip(got.shape, want))
    if bad:
        shown = ["*" if w is None else w for w in want]
        raise EngineError(f"graphs.{role}: '{tensor}' is {list(got.shape)} in the I/O table, the model's numbers "
                          f"give {shown}")


def _check_vision_io(m: Manifest, role: str, spec) -> None:
    _dims_agree(role, spec, io.PIXEL_VALUES, [None, 3, m.preprocess.height, m.preprocess.width])
    _dims_agree(role, spec, io.IMAGE_EMBEDS, [None, m.adapter.image_tokens, m.decoder.dim])


def _check_decoder_io(m: Manifest) -> None:
    d, spec = m.decoder, m.graphs.decoder
    keys = [s.name for s in spec.inputs if s.name.startswith("past_key.")]
    _agree("graphs.decoder: the number of past_key inputs", len(keys), d.n_layers, "decoder.n_layers")
    _agree("graphs.decoder: the past_key inputs", keys, [io.past_key(i) for i in range(d.n_layers)],
           "decoder.n_layers")
    _dims_agree("decoder", spec, io.INPUTS_EMBEDS, [None, None, d.dim])
    _dims_agree("decoder", spec, io.LOGITS, [None, d.vocab_size])
    kv = [None, None, d.n_kv_heads, d.head_dim] if spec.kv_cache == io.SEQ_MAJOR else \
        [None, d.n_kv_heads, None, d.head_dim]  # seq-major [T, B, Hkv, hd] | shared [B, Hkv, T, hd]
    for i in range(d.n_layers):
        for name in (io.past_key(i), io.past_value(i)):
            _dims_agree("decoder", spec, name, kv)


def _relative_paths(m: Manifest):
    g = m.graphs
    yield "tokenizer", m.tokenizer
    yield "embeddings.file", m.embeddings.file
    for role in ("vision", "decoder", "vision_fp32"):
        spec = getattr(g, role)
        if spec is not None:
            yield f"graphs.{role}.file", spec.file
            if spec.activations is not None:
                yield f"graphs.{role}.activations.record", spec.activations.record
                yield f"graphs.{role}.activations.trt_cache", spec.activations.trt_cache
    for i, f in enumerate(m.files):
        yield f"files[{i}].path", f.path
    if m.trt is not None:
        for role in ("vision", "decoder"):
            yield f"trt.{role}.file", getattr(m.trt, role).file
            yield f"trt.{role}.onnx", getattr(m.trt, role).onnx


def _check_paths(m: Manifest) -> None:
    """Every file the manifest names lies inside the engine folder: a relative path without '..'."""
    for where, path in _relative_paths(m):
        p = PurePosixPath(path)
        if not path or p.is_absolute() or ".." in p.parts or "\\" in path or str(p) != path or path == ".":
            raise EngineError(f"{where} is {path!r}, expected a file name inside the engine folder (relative, "
                              f"no '..')")


def _check_files_listed(m: Manifest) -> None:
    """The files the runtime reads are all in `files`, so all of them are hashed before use."""
    listed = [f.path for f in m.files]
    if len(set(listed)) != len(listed):
        dup = next(p for p in listed if listed.count(p) > 1)
        raise EngineError(f"files lists {dup!r} twice")
    g = m.graphs
    needed = [g.vision.file, g.decoder.file, m.embeddings.file, m.tokenizer]
    missing = [n for n in needed if n not in listed]
    if missing:
        raise EngineError(f"files does not list {missing}, which the runtime reads, so their sizes and sha256 "
                          f"would go unchecked")


# ----------------------------------------------------------------------------- the graphs' own record


def model_record(m: Manifest, role: str) -> str:
    """The model facts the `role` graph ("vision" | "decoder") carries, as canonical JSON (what the exporter
    stamps, what load compares)."""
    return json.dumps({k: _plain(getattr(m, k)) for k in RECORD_FIELDS[role]}, sort_keys=True, separators=(",", ":"))


def _plain(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def check_graph_records(engine_dir: Path, m: Manifest) -> None:
    """Each graph's stamped record against the manifest; graphs exported before records existed are skipped."""
    engine_dir = Path(engine_dir)
    listed = {f.path for f in m.files}
    for role in ("vision", "decoder"):
        spec = getattr(m.graphs, role)
        data = spec.file + ".data"
        if (engine_dir / data).exists() and data not in listed:
            raise EngineError(f"{engine_dir / 'manifest.json'}: files does not list {data}, the weights of "
                              f"{spec.file}: they could not be checked; re-export the engine folder")
        path = engine_dir / spec.file
        raw = read_metadata(path).get(RECORD_KEY)
        if raw is None:
            log.info("%s carries no model record (exported before records); checked by its I/O only", path)
            continue
        try:
            theirs = json.loads(raw)
        except json.JSONDecodeError:
            raise EngineError(f"{path}: its model record is not JSON; re-export the engine folder") from None
        diff = _first_difference(theirs, json.loads(model_record(m, role)), "")
        if diff is not None:
            where, graph_value, manifest_value = diff
            raise EngineError(
                f"{engine_dir / 'manifest.json'}: {where} is {json.dumps(manifest_value)}, but {spec.file} was "
                f"exported with {json.dumps(graph_value)}; manifest.json was edited or comes from another export: "
                f"restore it, or re-export the engine folder")


def _first_difference(a, b, where: str):
    """(dotted path, a's value, b's value) of the first place two JSON values differ, or None.  Only a's keys
    count: a field added to the specs later (with a default) is not in the records of earlier exports."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(a):
            d = _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else k)
            if d is not None:
                return d
        return None
    return None if a == b else (where, a, b)
