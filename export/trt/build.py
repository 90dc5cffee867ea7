"""Build TensorRT plans from an engine folder's ONNX graphs, on the GPU that will run them.

    engine_dir/vision.onnx  -> vision.plan   one profile: 1..Bv tiles
    engine_dir/decoder.onnx -> decoder.plan  two profiles: prefill (one slot, 1..T tokens), decode (1..B
                                             slots, 1 token); see runtime.trt_profiles for the shapes and
                                             the why.  B: --max-batch, by default the batch the decoder
                                             graph was exported for (graphs.decoder.max_batch), never more
    timing.cache            TensorRT's kernel timings, reused by the next build on this GPU
    manifest.json           rewritten once at the end with `trt` (TrtSpec): TensorRT version,
                            GPU, compute capability, profiles, plan hashes, builder memory

Networks are strongly typed: the precision is the ONNX's (fp16 tensors, Q/DQ int8, int4
weights); no builder precision flag is set, which is also the only way TensorRT 11 builds.
TF32 is switched off for fp32 graphs so an fp32 plan keeps greedy parity with its ONNX.
Before any GPU work each graph is checked: the standard flavour (no ONNX Runtime contrib
ops) and the TensorRT 10.3 parser lint (export.trt_lint).

Low-memory settings (8 GB Orin Nano): a 512 MB workspace cap, builder optimization level 1,
no auxiliary streams, one builder thread, and no post-build deserialization to measure the
plan's activation memory.  Each plan's peak host RSS and device memory are recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from export import progress
from export.trt.memory import PeakMemory
from export.trt_lint import lint_file
from runtime import cuda_mem, trt_compat
from runtime.backend import TRT_GPU, check_supported
from runtime.engine_check import check_graph_records
from runtime.errors import EngineError
from runtime.files import verify_files
from runtime.manifest import SCHEMA_VERSION, GraphSpec, Manifest, PlanSpec, ProfileSpec, TrtSpec, load_manifest, \
    save_manifest
from runtime.trt_profiles import decoder_profiles, opt_prompt_len, vision_profiles

TIMING_CACHE = "timing.cache"
LOW_MEMORY_WORKSPACE_MB = 512
DEFAULT_OPT_LEVEL = 3  # TensorRT's own default
LOW_MEMORY_OPT_LEVEL = 1


@dataclass(frozen=True)
class BuildConfig:
    max_seq_len: int | None = None  # None: the export's context window
    max_batch: int | None = None  # decoder slots; None: the graph's max_batch (its most)
    vision_max_batch: int | None = None  # None: 1 for a static model, every tile (+ thumbnail) for a dynamic one
    workspace_mb: int = 0  # 0: TensorRT's default (LOW_MEMORY_WORKSPACE_MB with low_memory)
    timing_cache: Path | None = None  # None: engine_dir / timing.cache
    low_memory: bool = False
    opt_level: int | None = None  # builder optimization level 0..5; None: 3, or 1 with low_memory

    def __post_init__(self):
        if (self.max_batch is not None and self.max_batch < 1) or \
                (self.vision_max_batch is not None and self.vision_max_batch < 1):
            raise EngineError(f"--max-batch and --vision-max-batch must be at least 1, got {self.max_batch}, "
                              f"{self.vision_max_batch}")
        if self.workspace_mb < 0:
            raise EngineError(f"--workspace must be a size in MB (0 = TensorRT's default), got {self.workspace_mb}")
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise EngineError(f"--opt-level must be in 0..5, got {self.opt_level}")

    @property
    def workspace_bytes(self) -> int:
        mb = self.workspace_mb or (LOW_MEMORY_WORKSPACE_MB if self.low_memory else 0)
        return mb << 20

    @property
    def level(self) -> int:
        if self.opt_level is not None:
            return self.opt_level
        return LOW_MEMORY_OPT_LEVEL if self.low_memory else DEFAULT_OPT_LEVEL


def plan_profiles(manifest: Manifest, cfg: BuildConfig) -> tuple[int, int, int, tuple, tuple]:
    """(max_seq_len, max_batch, vision_max_batch, vision profiles, decoder profiles) for this folder and config."""
    exported = manifest.decoder.max_seq_len
    t = cfg.max_seq_len or exported
    if not 2 <= t <= exported:
        raise EngineError(f"--max-seq-len {t} is outside 2..{exported}, the context window the graphs were "
                          f"exported for; re-export with a larger --max-seq-len for more")
    graph_batch = manifest.graphs.decoder.max_batch  # 1 before schema 5: those graphs cannot mix lengths
    b = cfg.max_batch or graph_batch
    if b > graph_batch:
        raise EngineError(f"--max-batch {b} is above {graph_batch}, the batch {manifest.graphs.decoder.file} was "
                          f"exported for (graphs.decoder.max_batch); use --max-batch {graph_batch} or less, or "
                          f"re-export with `python -m export --max-batch {b}`")
    tiling = manifest.tiling
    tiles = 1 if tiling is None else tiling.max_tiles + (1 if tiling.thumbnail and tiling.max_tiles > 1 else 0)
    bv = cfg.vision_max_batch or tiles
    vision = vision_profiles(manifest.graphs.vision, bv, opt_batch=tiles)
    decoder = decoder_profiles(manifest.graphs.decoder, t, b, opt_prompt_len(manifest.adapter.image_tokens, t))
    return t, b, bv, vision, decoder


def check_graph(engine_dir: Path, role: str, graph: GraphSpec) -> None:
    """Refuse a graph TensorRT cannot parse before spending minutes on it."""
    check_supported(TRT_GPU, role, graph, engine_dir)
    problems = lint_file(engine_dir / graph.file)
    if problems:
        raise EngineError(f"{engine_dir / graph.file}: {len(problems)} problem(s) for TensorRT's ONNX parser, first: "
                          f"{problems[0]}")


def build_plans(engine_dir: Path, cfg: BuildConfig) -> Manifest:
    """Build vision.plan and decoder.plan, then rewrite manifest.json once with the `trt` record."""
    engine_dir = Path(engine_dir)
    manifest = load_manifest(engine_dir)
    verify_files(engine_dir, manifest.files)
    check_graph_records(engine_dir, manifest)
    g = manifest.graphs
    for role, graph in (("vision", g.vision), ("decoder", g.decoder)):
        check_graph(engine_dir, role, graph)
    t, b, bv, vision_profs, decoder_profs = plan_profiles(manifest, cfg)

    trt = trt_compat.import_tensorrt()
    cuda = cuda_mem.open_cuda()
    try:
        info = cuda.device_info()
        version = trt_compat.version_string(trt)
        progress.say(f"TensorRT {version}, {info.name} (sm {info.compute_capability}, "
                     f"{info.total_bytes / 2**30:.1f} GB), CUDA via {cuda.binding}")
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        if cfg.low_memory and hasattr(builder, "max_threads"):
            builder.max_threads = 1
        cache_path = cfg.timing_cache or engine_dir / TIMING_CACHE
        cache = None
        hashes = {f.path: f.sha256 for f in manifest.files}  # verified above: the graphs the plans come from
        plans = {}
        for role, graph, profiles in (("vision", g.vision, vision_profs), ("decoder", g.decoder, decoder_profs)):
            plans[role], cache = build_one(trt, builder, logger, cuda, engine_dir, role, graph, hashes[graph.file],
                                           profiles, cfg, cache_path, cache)
        write_atomic(cache_path, bytes(memoryview(cache.serialize())))
        progress.say(f"timing cache: {cache_path}")
        spec = TrtSpec(tensorrt_version=version, gpu_name=info.name, compute_capability=info.compute_capability,
                       max_seq_len=t, max_batch=b, vision_max_batch=bv,
                       workspace_mb=cfg.workspace_bytes >> 20,
                       low_memory=cfg.low_memory, vision=plans["vision"], decoder=plans["decoder"])
    finally:
        cuda.close()
    manifest = dataclasses.replace(manifest, schema_version=SCHEMA_VERSION, trt=spec)
    save_manifest(engine_dir, manifest)
    return manifest


def build_one(trt, builder, logger, cuda, engine_dir: Path, role: str, graph: GraphSpec, graph_sha256: str,
              profiles: tuple[ProfileSpec, ...], cfg: BuildConfig, cache_path: Path, cache):
    """Parse one ONNX graph, build and write its plan; returns (PlanSpec, the timing cache)."""
    onnx_path = engine_dir / graph.file
    network = builder.create_network(trt_compat.network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the path: external weights are read in place
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f"{onnx_path}: TensorRT's ONNX parser failed ({len(errors)} error(s)): "
                          f"{errors[0] if errors else 'no detail'}; re-export the folder with this version's "
                          f"`python -m export` and the standard flavour")
    config = builder.create_builder_config()
    if cfg.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_bytes)
    config.builder_optimization_level = cfg.level
    if cfg.low_memory:
        config.max_aux_streams = 0
    if graph.precision == "fp32":
        trt_compat.clear_tf32(trt, config)
    cache = cache or load_timing_cache(config, cache_path)
    if not config.set_timing_cache(cache, False):  # False: refuse timings from another TensorRT or GPU
        progress.say(f"{cache_path}: timings of another TensorRT or GPU, starting a new timing cache")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    for p in profiles:
        profile = builder.create_optimization_profile()
        for s in p.shapes:
            try:  # TensorRT raises RuntimeError for inconsistent shapes
                profile.set_shape(s.tensor, s.min, s.opt, s.max)
            except RuntimeError as e:
                raise EngineError(f"{onnx_path}: TensorRT refused the {p.name!r} profile of '{s.tensor}' "
                                  f"{s.min}..{s.max}: {e}") from None
        if config.add_optimization_profile(profile) < 0:
            raise EngineError(f"{onnx_path}: TensorRT refused the {p.name!r} optimization profile {p.shapes}")

    plan_file = f"{role}.plan"
    label = f"building {plan_file} from {graph.file} ({graph.precision}, {len(profiles)} profile(s))"
    with progress.step(label), PeakMemory(lambda: _device_used(cuda)) as peak:
        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - t0
    if serialized is None:
        raise EngineError(f"{onnx_path}: TensorRT could not build the engine (see its log above); if it ran out of "
                          f"memory, add --low-memory, free memory (close other programs, add swap) or export a "
                          f"smaller precision (--precision int4)")
    data = bytes(memoryview(serialized))
    del serialized, network, parser
    write_atomic(engine_dir / plan_file, data)
    device_memory = -1 if cfg.low_memory else _activation_bytes(trt, logger, data)
    progress.say(f"{plan_file}: {len(data) / 2**20:.1f} MB in {seconds:.1f}s; builder peak host RSS "
                 f"{_gb(peak.host_bytes)}, device {_gb(peak.device_bytes)}; activation memory {_gb(device_memory)}")
    plan = PlanSpec(file=plan_file, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), onnx=graph.file,
                    onnx_sha256=graph_sha256, precision=graph.precision, profiles=profiles, device_memory=device_memory,
                    build_seconds=round(seconds, 3), builder_peak_host_bytes=peak.host_bytes,
                    builder_peak_device_bytes=peak.device_bytes)
    return plan, config.get_timing_cache()


def load_timing_cache(config, path: Path):
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None and data:
        progress.say(f"{path}: not a timing cache of this TensorRT/GPU, starting a new one")
        cache = config.create_timing_cache(b"")
    return cache


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _activation_bytes(trt, logger, data: bytes) -> int:
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    return -1 if engine is None else trt_compat.device_memory_size(engine)


def _device_used(cuda) -> int:
    free, total = cuda.mem_get_info()
    return total - free


def _gb(n: int) -> str:
    return "n/a" if n < 0 else f"{n / 2**30:.2f} GB"
