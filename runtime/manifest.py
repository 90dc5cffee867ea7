"""The engine-folder manifest: the one contract between the exporter and the runtime.

`export/` builds a `Manifest` and writes it once as `manifest.json`; the runtime
reads it with `load_manifest`, which checks the schema version, every field's
type, unknown or missing keys, and (through `runtime.files`) the files' sizes and
sha256.  Nothing about a model is inferred from file or folder names.

Layout of an engine folder (schema 2):

    manifest.json          this dataclass, as JSON
    vision.onnx(+.data)    pixels [B,3,H,W] f32 -> image_embeds [B,image_tokens,dim] f32
    decoder.onnx(+.data)   inputs_embeds + positions + past K/V -> last logits + new K/V
    embed_tokens.npy       the input embedding table [vocab, dim] (see runtime.graph_io)
    tokenizer.json         Hugging Face `tokenizers` file with the ChatML special tokens
    vision.int8.onnx, calibration.json, calibration.cache
                           after INT8 calibration (`python -m calib`): the QDQ vision graph, the
                           calibration record, and a legacy TensorRT calibration cache
    vision.plan, decoder.plan, timing.cache
                           after `python -m export.trt` on the target GPU: serialized TensorRT
                           engines, recorded in `trt` (`TrtSpec`) with the TensorRT version, GPU
                           and optimization profiles they were built for

Precision is a property of each graph (`GraphSpec`): fp32, fp16, int8 or int4, in one of two
flavours.  "standard" graphs use default-domain ONNX ops only (FP16 tensors, symmetric
QuantizeLinear/DequantizeLinear with zero point 0), so TensorRT's parser and ONNX Runtime
both load them; "onnxruntime" graphs use ONNX Runtime's contrib ops and load in ONNX Runtime
only: the fused decoder (GroupQueryAttention with a shared KV buffer, `kv_cache` "shared_bnsh",
SkipSimplifiedLayerNormalization; MatMulNBits weights when int8/int4).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from runtime.engine_check import check_consistent
from runtime.errors import EngineError

SCHEMA_VERSION = 5  # 2: per-graph precision, flavour, opset and quantization records; 3: TensorRT plans;
#                    4: a graph's KV-cache binding (`kv_cache`), for the fused onnxruntime-flavour decoder;
#                    5: a decoder graph's batch capability (`max_batch`: sequences of different lengths per call)
READABLE_VERSIONS = (2, 3, 4, 5)  # a schema 2 folder is a schema 3 folder without TensorRT plans; both have
#                                seq-major decoders, the default of `kv_cache`
MANIFEST_FILE = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20

MAX_BATCH = 256  # sequences per decoder call, the most a manifest may record

# A dimension is a fixed int or a symbolic name ("batch", "seq", "past_seq", ...).
Dim = typing.Union[int, str]


@dataclass(frozen=True)
class VisionSpec:
    """The vision tower (SigLIP family): pixels -> patch features."""

    family: str  # "siglip" (LayerNorm, GELU MLP, biases) | "aimv2" (RMSNorm, SwiGLU, no biases)
    image_size: int  # square input side (one tile for tiled models), pixels
    patch_size: int
    width: int  # hidden size of the tower
    n_layers: int
    n_heads: int
    mlp_dim: int
    act: str  # "gelu_tanh" (siglip) | "swiglu" (aimv2)
    norm_eps: float
    feature: str  # which hidden state feeds the adapter: after the tower's final norm

    def __post_init__(self):
        _one_of("vision.family", self.family, ("siglip", "aimv2"))
        _one_of("vision.feature", self.feature, ("post_layernorm",) if self.family == "siglip" else ("post_rmsnorm",))
        _one_of("vision.act", self.act, ("gelu_tanh",) if self.family == "siglip" else ("swiglu",))
        if self.patch_size < 1 or self.image_size < 1:
            raise EngineError(f"vision.image_size and patch_size must be at least 1, got {self.image_size} and "
                              f"{self.patch_size}")
        if self.image_size % self.patch_size:
            raise EngineError(
                f"vision.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid * self.grid


@dataclass(frozen=True)
class AdapterSpec:
    """Pixel shuffle (space-to-depth) then LayerNorm -> Linear -> GELU -> Linear."""

    kind: str  # "pixel_shuffle_mlp"
    shuffle_factor: int
    shuffle_order: str  # "internvl": the channel order of InternVL's pixel_shuffle
    in_dim: int  # vision width * factor**2
    hidden_dim: int
    out_dim: int  # decoder dim
    norm_eps: float
    image_tokens: int  # tokens per image handed to the decoder

    def __post_init__(self):
        _one_of("adapter.kind", self.kind, ("pixel_shuffle_mlp",))
        _one_of("adapter.shuffle_order", self.shuffle_order, ("internvl",))


@dataclass(frozen=True)
class TilingSpec:
    """Dynamic resolution: an image becomes a grid of tiles (+ a thumbnail); see runtime.tiling.

    Every tile is vision.image_size square and yields cells_per_side**2 tokens, one per token
    cell of cell_px pixels.  With iss_margin m > 0 (Implicit Semantic Stitching) neighbouring
    tiles overlap by 2m cells and each keeps only its side of the seam, so the kept tokens
    cover the image once; m = 0 is plain dynamic cropping.  Kept tokens go to the decoder in
    raster order over the whole image, then the thumbnail's.
    """

    max_tiles: int  # rows * cols <= max_tiles
    thumbnail: bool  # add a whole-image tile when the grid has more than one tile
    iss_margin: int  # token cells kept by each side of a seam; 0 = plain dynamic cropping
    cell_px: int  # pixels per token cell: patch_size * shuffle_factor
    cells_per_side: int  # token cells along a tile side
    order: str  # "raster_then_thumbnail"

    def __post_init__(self):
        _one_of("tiling.order", self.order, ("raster_then_thumbnail",))
        if self.max_tiles < 1:
            raise EngineError(f"tiling.max_tiles must be at least 1, got {self.max_tiles}")
        if not 0 <= 2 * self.iss_margin < self.cells_per_side:
            raise EngineError(f"tiling.iss_margin must be in 0..{(self.cells_per_side - 1) // 2} "
                              f"(less than half a tile's {self.cells_per_side} cells), got {self.iss_margin}")


@dataclass(frozen=True)
class DecoderSpec:
    """The Qwen2-style language model."""

    family: str  # "qwen2"
    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int  # SwiGLU inner width
    norm_eps: float
    rope_theta: float
    vocab_size: int
    tied_embeddings: bool
    max_seq_len: int  # context window the graph and the KV cache are built for
    kv_layout: str  # "seq_major": K/V tensors are [seq, batch, n_kv_heads, head_dim]

    def __post_init__(self):
        _one_of("decoder.family", self.family, ("qwen2",))
        _one_of("decoder.kv_layout", self.kv_layout, ("seq_major",))
        if self.n_kv_heads < 1:
            raise EngineError(f"decoder.n_kv_heads must be at least 1, got {self.n_kv_heads}")
        if self.n_heads % self.n_kv_heads:
            raise EngineError(
                f"decoder.n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")


@dataclass(frozen=True)
class TokenSpec:
    """Special tokens, as strings and ids of tokenizer.json."""

    im_start: str
    im_end: str
    image_start: str
    image_pad: str  # placeholder id; the decoder graph swaps these rows for image embeddings
    image_end: str
    eos: str
    im_start_id: int
    im_end_id: int
    image_start_id: int
    image_pad_id: int
    image_end_id: int
    eos_id: int
    stop_ids: tuple[int, ...]  # generation stops on any of these


@dataclass(frozen=True)
class ChatSpec:
    """The ChatML prompt: system turn, user turn with the image first, assistant prefix."""

    format: str  # "chatml"
    default_system: str  # "" means: no system turn
    image_placement: str  # "before_text": <image>\n{prompt}

    def __post_init__(self):
        _one_of("chat.format", self.format, ("chatml",))
        _one_of("chat.image_placement", self.image_placement, ("before_text",))


@dataclass(frozen=True)
class PreprocessSpec:
    """How an RGB uint8 image becomes the vision graph's input tensor."""

    height: int
    width: int
    resample: str  # "pil_bicubic": PIL's antialiased bicubic, as the HF SigLIP processor
    rescale: float  # multiply uint8 values by this (1/255)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    alpha_background: tuple[int, int, int]  # RGBA images are composited on this colour

    def __post_init__(self):
        _one_of("preprocess.resample", self.resample, ("pil_bicubic",))


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64", ...
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class ArraySpec:
    """A NumPy .npy file of the engine folder."""

    file: str
    dtype: str
    shape: tuple[int, ...]


PRECISIONS = ("fp32", "fp16", "int8", "int4")
FLAVOURS = ("standard", "onnxruntime")


@dataclass(frozen=True)
class WeightQuant:
    """Weight quantization of a graph's linear layers: symmetric (zero point 0), dequantized in-graph."""

    bits: int  # 8 | 4
    block_size: int  # 0: one scale per output channel; else one scale per block_size inputs of a channel
    format: str  # "qdq": DequantizeLinear -> MatMul (standard ONNX) | "matmul_nbits": com.microsoft.MatMulNBits
    lm_head: bool  # the logits projection is quantized too (else it stays in the graph's float type)
    layers: int  # how many weight matrices are quantized (a check that the pass found them all)
    # The float type the weights dequantize to, and so of the activations and the KV cache:
    # "fp32", or "fp16" (W8A16 / W4A16: what TensorRT's weight-only GEMMs run fastest).
    compute: str = "fp32"

    def __post_init__(self):
        _one_of("weights.bits", self.bits, (8, 4))
        _one_of("weights.format", self.format, ("qdq", "matmul_nbits"))
        _one_of("weights.compute", self.compute, ("fp32",) if self.format == "matmul_nbits" else ("fp32", "fp16"))
        if self.block_size < 0 or (self.block_size and self.block_size & (self.block_size - 1)):
            raise EngineError(f"weights.block_size must be 0 (per channel) or a power of two, got {self.block_size}")


@dataclass(frozen=True)
class ActivationQuant:
    """Static INT8 activation quantization from calibration (the QDQ vision graph)."""

    bits: int  # 8
    method: str  # "minmax" | "entropy" | "percentile"
    images: int  # calibration images the ranges came from
    record: str  # relative path of the calibration record (calibration.json)
    trt_cache: str  # relative path of the legacy TensorRT calibration cache

    def __post_init__(self):
        _one_of("activations.bits", self.bits, (8,))
        _one_of("activations.method", self.method, ("minmax", "entropy", "percentile"))


@dataclass(frozen=True)
class GraphSpec:
    file: str  # relative to the engine folder
    precision: str  # "fp32" | "fp16" | "int8" | "int4" (the weights' type; norms, softmax, logits stay fp32)
    flavour: str  # "standard": default-domain ONNX ops (TensorRT and ONNX Runtime) | "onnxruntime": contrib ops
    opset: int  # default-domain opset of the graph
    weights: WeightQuant | None  # None: float weights (fp32, fp16)
    activations: ActivationQuant | None  # None: float activations
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # How a decoder graph's K/V tensors bind to the runtime's cache (runtime.graph_io): "seq_major"
    # (the traced graph: past rows in, new rows out) or "shared_bnsh" (the fused onnxruntime graph:
    # GroupQueryAttention's one [B, Hkv, max_seq, hd] buffer, read and written in place).
    kv_cache: str = "seq_major"
    # A decoder graph: how many sequences, each at its own position, one call may carry (the runtime's cache
    # slots).  Graphs before schema 5 assumed one shared position for the whole batch, so they run at 1.
    # A vision graph: 1 (its batch of tiles is free, not a capability).
    max_batch: int = 1

    def __post_init__(self):
        if not isinstance(self.max_batch, int) or not 1 <= self.max_batch <= MAX_BATCH:
            raise EngineError(f"graph {self.file}: max_batch must be 1..{MAX_BATCH}, got {self.max_batch!r}")
        _one_of("graph.precision", self.precision, PRECISIONS)
        _one_of("graph.flavour", self.flavour, FLAVOURS)
        _one_of("graph.kv_cache", self.kv_cache, ("seq_major", "shared_bnsh"))
        if self.flavour == "onnxruntime" and self.weights is None and self.kv_cache != "shared_bnsh":
            raise EngineError(f"graph {self.file}: an onnxruntime-flavour graph without quantized weights is the "
                              f"fused decoder, whose kv_cache is shared_bnsh, got {self.kv_cache}")
        if self.kv_cache == "shared_bnsh" and self.flavour != "onnxruntime":
            raise EngineError(f"graph {self.file}: kv_cache shared_bnsh is the onnxruntime flavour's "
                              f"(GroupQueryAttention), not the {self.flavour} flavour's")
        where = f"graph {self.file}"
        if self.precision in ("int8", "int4"):
            if self.weights is None or self.weights.bits != int(self.precision[3:]):
                raise EngineError(f"{where}: precision {self.precision} needs a weights record with bits "
                                  f"{self.precision[3:]}, got {self.weights}")
        elif self.weights is not None or self.activations is not None:
            raise EngineError(f"{where}: precision {self.precision} has float weights, but the manifest "
                              f"carries a quantization record")
        nbits = self.weights is not None and self.weights.format == "matmul_nbits"
        if self.weights is not None and nbits != (self.flavour == "onnxruntime"):
            raise EngineError(f"{where}: flavour {self.flavour} does not match weight format "
                              f"{self.weights.format if self.weights else None}")

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, self.file)

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, self.file)


@dataclass(frozen=True)
class GraphsSpec:
    vision: GraphSpec
    decoder: GraphSpec
    # The fp32 vision graph an INT8 one was calibrated from, kept for recalibration and the
    # accuracy report; None when `vision` itself is the fp32 graph or none was kept.
    vision_fp32: GraphSpec | None = None


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the engine folder
    bytes: int
    sha256: str


@dataclass(frozen=True)
class SourceSpec:
    """Where the weights came from, so `export.reference` can rebuild the very same model."""

    kind: str  # "random" | "checkpoint"
    seed: int  # for "random"; -1 otherwise
    checkpoint: tuple[FileEntry, ...]  # for "checkpoint": absolute paths with size and sha256
    checkpoint_args: tuple[tuple[str, str], ...]  # ("checkpoint"|"vision"|"llm"|"adapter", path)

    def __post_init__(self):
        _one_of("source.kind", self.kind, ("random", "checkpoint"))


@dataclass(frozen=True)
class ProfileShape:
    """One input's range in a TensorRT optimization profile (concrete dims, min <= opt <= max)."""

    tensor: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self):
        if not len(self.min) == len(self.opt) == len(self.max) or any(
                not 0 <= a <= b <= c for a, b, c in zip(self.min, self.opt, self.max)):
            raise EngineError(f"profile shape of '{self.tensor}' needs 0 <= min <= opt <= max per dimension, got "
                              f"min {list(self.min)} opt {list(self.opt)} max {list(self.max)}")


@dataclass(frozen=True)
class ProfileSpec:
    """A TensorRT optimization profile; its index in PlanSpec.profiles is TensorRT's profile index."""

    name: str  # "vision" | "prefill" | "decode"
    shapes: tuple[ProfileShape, ...]  # one per graph input

    def shape(self, tensor: str) -> ProfileShape:
        for s in self.shapes:
            if s.tensor == tensor:
                return s
        raise EngineError(f"profile {self.name!r} has no input named '{tensor}'")


@dataclass(frozen=True)
class PlanSpec:
    """A serialized TensorRT engine built from one ONNX graph of the folder."""

    file: str  # "vision.plan" | "decoder.plan", relative to the engine folder
    bytes: int
    sha256: str
    onnx: str  # the graph file it was built from (GraphSpec.file)
    onnx_sha256: str  # that graph file's sha256 when the plan was built: a re-export makes the plan stale
    precision: str  # the graph's precision (strongly typed: TensorRT keeps the ONNX's types)
    profiles: tuple[ProfileSpec, ...]
    device_memory: int  # bytes of activation memory the engine asks for, the largest profile's
    build_seconds: float
    builder_peak_host_bytes: int  # peak RSS of the building process
    builder_peak_device_bytes: int  # peak device memory in use while building (-1: not measured)


@dataclass(frozen=True)
class TrtSpec:
    """What `python -m export.trt` built, and for which machine: plans run only where they were built."""

    tensorrt_version: str  # e.g. "10.3.0"
    gpu_name: str  # e.g. "Orin" or "NVIDIA H100 80GB HBM3"
    compute_capability: str  # "major.minor", e.g. "8.7"
    max_seq_len: int  # decoder profiles cover positions 0..max_seq_len-1
    max_batch: int  # decoder batch; the vision profile covers up to vision_max_batch tiles
    vision_max_batch: int
    workspace_mb: int  # builder workspace limit; 0 = TensorRT's default (the device's memory)
    low_memory: bool  # built with the low-memory settings (8 GB Orin Nano)
    vision: PlanSpec
    decoder: PlanSpec

    def plan_files(self) -> tuple[FileEntry, ...]:
        """The plans as file entries, for the same size/sha256 check as the folder's other files."""
        return tuple(FileEntry(p.file, p.bytes, p.sha256) for p in (self.vision, self.decoder))

    def __post_init__(self):
        if self.max_seq_len < 2 or self.max_batch < 1 or self.vision_max_batch < 1:
            raise EngineError(f"trt: max_seq_len >= 2, max_batch >= 1 and vision_max_batch >= 1 expected, got "
                              f"{self.max_seq_len}, {self.max_batch}, {self.vision_max_batch}")


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    model: str  # human name, e.g. "flash-vl-2b-static"
    preset: str  # export preset the architecture came from
    exporter: str  # "flash-vl-export <version>, torch <version>, onnx opset <n>"
    vision: VisionSpec
    adapter: AdapterSpec
    decoder: DecoderSpec
    tokens: TokenSpec
    chat: ChatSpec
    preprocess: PreprocessSpec
    graphs: GraphsSpec
    embeddings: ArraySpec  # the decoder's input embedding table, looked up by the runtime
    tokenizer: str  # relative path of tokenizer.json
    files: tuple[FileEntry, ...] = field(default=())
    source: SourceSpec | None = None
    tiling: TilingSpec | None = None  # None: one fixed-size image (static model)
    trt: TrtSpec | None = None  # None: no TensorRT plans built (yet) for this folder

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


def save_manifest(engine_dir: str | Path, manifest: Manifest) -> None:
    """Write manifest.json whole and atomically (the folder's commit point); drop the hash stamps."""
    engine_dir = Path(engine_dir)
    tmp = engine_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(tmp, engine_dir / MANIFEST_FILE)
    (engine_dir / ".verified.json").unlink(missing_ok=True)


# ----------------------------------------------------------------------------- loading


def load_manifest(engine_dir: str | Path) -> Manifest:
    """Read `engine_dir/manifest.json` strictly; raise EngineError with the fix on any problem."""
    engine_dir = Path(engine_dir)
    if not engine_dir.exists():
        raise EngineError(
            f"{engine_dir}: engine folder not found; export one, e.g. the demo model from the repository root: "
            f"`python -m export --preset demo --checkpoint export/demo/checkpoint --out {engine_dir}`")
    if not engine_dir.is_dir():
        raise EngineError(f"{engine_dir}: is a file, expected an engine folder holding {MANIFEST_FILE}")
    path = engine_dir / MANIFEST_FILE
    if path.exists() and not path.is_file():
        raise EngineError(f"{path}: not a regular file (a folder, device or pipe); re-export the engine folder")
    if not path.is_file():
        raise EngineError(
            f"{path}: missing; {engine_dir} is not an engine folder (expected {MANIFEST_FILE} "
            f"written by `python -m export`)")
    try:
        with open(path, "rb") as f:  # ours are a few KB: a bigger file (or /dev/zero behind a link) is not one
            data = f.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise EngineError(f"{path}: more than {MAX_MANIFEST_BYTES:,} bytes, a manifest is a few KB; this is not "
                              f"the manifest.json `python -m export` writes, re-export the engine folder")
        raw = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else e
        raise EngineError(f"{path}: not valid JSON ({reason}); re-export the engine folder") from None
    if not isinstance(raw, dict):
        raise EngineError(f"{path}: expected a JSON object, got {type(raw).__name__}; re-export the engine folder")
    version = raw.get("schema_version")
    if version not in READABLE_VERSIONS or (version == 2 and "trt" in raw):
        raise EngineError(
            f"{path}: manifest schema version {version!r}, this runtime reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; re-export the engine folder with this version's "
            f"`python -m export`")
    try:
        manifest = parse_manifest(raw)
        check_consistent(manifest)
    except EngineError as e:
        raise EngineError(f"{path}: {e}; re-export the engine folder") from None
    if version < 4 and manifest.graphs.decoder.kv_cache != "seq_major":
        raise EngineError(f"{path}: schema {version} has seq-major decoders only, this one says kv_cache "
                          f"{manifest.graphs.decoder.kv_cache}; re-export the engine folder")
    if version < 5 and manifest.graphs.decoder.max_batch != 1:
        raise EngineError(f"{path}: schema {version} decoders carry one sequence a call, this one says max_batch "
                          f"{manifest.graphs.decoder.max_batch}; re-export the engine folder")
    return manifest


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_manifest(raw: dict) -> Manifest:
    return _build(Manifest, raw, "manifest")


def _build(cls, value, where: str):
    """Build dataclass `cls` from JSON `value`, checking keys and types exactly."""
    if not isinstance(value, dict):
        raise EngineError(f"{where}: expected an object, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise EngineError(f"{where}: unknown keys {unknown}")
    kwargs = {}
    for name, f in fields.items():
        if name not in value:
            if f.default is not dataclasses.MISSING:
                continue
            raise EngineError(f"{where}: missing key '{name}'")
        kwargs[name] = _convert(hints[name], value[name], f"{where}.{name}")
    return cls(**kwargs)


def _convert(tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except EngineError:
                pass
        raise EngineError(f"{where}: {value!r} matches none of {[getattr(a, '__name__', a) for a in args]}")
    if origin is tuple:
        if not isinstance(value, list):
            raise EngineError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise EngineError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise EngineError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EngineError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise EngineError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise EngineError(f"{where}: expected a string, got {value!r}")
        return value
    raise AssertionError(f"manifest type {tp} at {where} has no converter")


def _one_of(what: str, got, allowed: tuple):
    if got not in allowed:
        raise EngineError(f"{what} must be one of {list(allowed)}, got {got!r}")


def _by_name(specs: tuple[TensorSpec, ...], name: str, file: str) -> TensorSpec:
    for s in specs:
        if s.name == name:
            return s
    raise EngineError(f"{file}: no tensor named '{name}' in the manifest's I/O table")

