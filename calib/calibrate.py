"""INT8 calibration of the vision graph: fp32 graph + real images -> QDQ graph, record, TensorRT cache.

Inputs: an engine folder holding an fp32 vision graph (`graphs.vision`, or `graphs.vision_fp32`
after an earlier calibration) and images (a folder, one file, or a video; see calib.sources).
Each image goes through the runtime's own preprocessing and tiling (`runtime.api.vision_pixels`),
so the ranges are those of the tensors the runtime feeds.

Outputs, in the engine folder, and a rewritten manifest whose `graphs.vision` is the INT8 graph
(`calibrate` writes them into a new folder with hard links of the rest, swapped in whole: export.atomic):

    vision.int8.onnx(+.data)  explicit QuantizeLinear/DequantizeLinear (int8, zero point 0) on the
                              inputs of every linear layer and the patch-embedding Conv; weights
                              int8 per output channel; attention's activation×activation MatMuls,
                              norms and softmax stay float
    calibration.json          method, image count and hashes, skipped files, per-tensor ranges
    calibration.cache         the same ranges as a legacy TensorRT calibration cache (text:
                              `TRT-<version>-EntropyCalibration2`, then `tensor: <scale as
                              big-endian float32 hex>`), for TensorRT 10.x builds from the fp32
                              graph through the implicit-quantization path

Ranges come from ONNX Runtime's calibrators (minmax, entropy, percentile 99.999), symmetric.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from calib.sources import CalibError, SourceReport, check_report, count_images, iter_images
from export import progress
from export.atomic import building, link_rest
from export.graphs import graph_spec, load, save, stamp_record
from runtime.api import vision_pixels
from runtime.engine_check import RECORD_KEY, check_graph_records, model_record
from runtime.files import file_entry, sha256_of, verify_files
from runtime.manifest import ActivationQuant, GraphSpec, Manifest, WeightQuant, load_manifest, save_manifest

log = logging.getLogger(__name__)

INT8_VISION_FILE = "vision.int8.onnx"
RECORD_FILE = "calibration.json"
TRT_CACHE_FILE = "calibration.cache"
TRT_CACHE_VERSION = 100300  # the header's TensorRT version field: 10.3, the oldest we support
METHODS = ("minmax", "entropy", "percentile")
PERCENTILE = 99.999
DEFAULT_IMAGES = Path(__file__).parent / "images"
MIN_IMAGES = 16  # fewer gives ranges that move with every image added (a warning, not an error)
_QUANT_OPS = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class CalibConfig:
    images: Path = DEFAULT_IMAGES
    max_images: int | None = None
    method: str = "percentile"

    def __post_init__(self):
        if self.method not in METHODS:
            raise CalibError(f"calibration method {self.method!r} is not one of {list(METHODS)}")


def fp32_vision(manifest: Manifest, engine_dir: Path) -> GraphSpec:
    g = manifest.graphs
    if g.vision.precision == "fp32":
        return g.vision
    if g.vision_fp32 is not None:
        return g.vision_fp32
    raise CalibError(f"{engine_dir}: its vision graph is {g.vision.precision} and no fp32 vision graph is kept "
                     f"to calibrate from; export the folder with `--vision-precision fp32` (or int8) and calibrate that")


def weight_nodes(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Linear layers and the patch Conv: nodes of _QUANT_OPS whose weight is an initializer."""
    inits = {t.name for t in proto.graph.initializer}
    return [n for n in proto.graph.node if n.op_type in _QUANT_OPS and len(n.input) > 1 and n.input[1] in inits]


class _OneBatch:
    """The CalibrationDataReader protocol for one feed dict."""

    def __init__(self, feed: dict):
        self.feeds = [feed]

    def get_next(self):
        return self.feeds.pop() if self.feeds else None


def make_calibrator(src: Path, method: str, tensors: set[str], augmented: Path):
    """ONNX Runtime's calibrator for `method`, watching only `tensors` (the linear layers' inputs and outputs:
    all that the QDQ pass quantizes; attention's [heads, seq, seq] scores would cost gigabytes)."""
    from onnxruntime.quantization import calibrate as c

    base = {"minmax": c.MinMaxCalibrater, "entropy": c.EntropyCalibrater, "percentile": c.PercentileCalibrater}[method]

    class Watched(base):
        def select_tensors_to_calibrate(self, model):
            found, value_infos = super().select_tensors_to_calibrate(model)
            return found & tensors, value_infos

    extra = {"percentile": PERCENTILE} if method == "percentile" else {}
    calibrator = Watched(src, list(_QUANT_OPS), augmented_model_path=str(augmented), symmetric=True,
                         use_external_data_format=True, **extra)
    calibrator.augment_graph()
    calibrator.create_inference_session()
    return calibrator


def collect_ranges(src: Path, manifest: Manifest, config: CalibConfig, tensors: set[str], report: SourceReport,
                   hashes: list, work: Path):
    """Run the fp32 graph over the images through ONNX Runtime's calibrator; return its TensorsData."""
    calibrator = make_calibrator(src, config.method, tensors, work / "augmented.onnx")
    total = count_images(config.images, config.max_images)
    with progress.Bar("calibrating", total=total) as bar:
        for image in iter_images(config.images, config.max_images, report):
            pixels, _ = vision_pixels(image.rgb, manifest)  # [tiles, 3, S, S] f32
            with quiet_onnxruntime():
                calibrator.collect_data(_OneBatch({"pixel_values": pixels}))
            hashes.append({"name": image.name, "shape": list(image.rgb.shape),
                           "sha256": hashlib.sha256(image.rgb.tobytes()).hexdigest()})
            bar.advance()
    warning = check_report(report, MIN_IMAGES)
    if warning:
        progress.say(f"warning: {warning}")
    with progress.step(f"computing {config.method} ranges"), quiet_onnxruntime():
        return calibrator.compute_data()


@contextlib.contextmanager
def quiet_onnxruntime():
    """ONNX Runtime's quantization tools print histogram settings and advise pre-processing (our graphs
    are already optimized and shape-inferred by the exporter) on stdout and the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            yield
    finally:
        root.setLevel(level)
    if out.getvalue().strip():
        log.debug("onnxruntime said: %s", out.getvalue().strip())


def quantize_vision(src: Path, out: Path, ranges_file: Path, nodes: list[str], calibrate_method) -> None:
    """QDQ graph from the ranges file; `calibrate_method` is the one the ranges were computed with (ORT checks)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(str(src), str(out), calibration_data_reader=None, calibration_cache_path=ranges_file,
                    calibrate_method=calibrate_method, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(_QUANT_OPS),
                    nodes_to_quantize=nodes, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, use_external_data_format=True,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})


def trt_cache_text(ranges: dict[str, tuple[float, float]]) -> str:
    """Legacy TensorRT calibration cache: one `name: hex(big-endian f32 scale)` line per tensor."""
    lines = [f"TRT-{TRT_CACHE_VERSION}-EntropyCalibration2"]
    for name in sorted(ranges):
        lo, hi = ranges[name]
        scale = max(abs(lo), abs(hi)) / 127.0
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"


def calibrate(engine_dir: Path, config: CalibConfig) -> Manifest:
    """`python -m calib`: calibrate a finished engine folder in place and rewrite its manifest."""
    engine_dir = Path(engine_dir)
    manifest = load_manifest(engine_dir)
    verify_files(engine_dir, manifest.files)
    check_graph_records(engine_dir, manifest)  # an edited manifest is not calibrated with, then stamped
    fp32_vision(manifest, engine_dir)  # refused here, naming the folder rather than the copy
    # The new files go into a new folder with hard links of the rest, swapped in whole: a failure or kill
    # leaves the folder as it was, where rewriting it in place would leave files out of step with the manifest.
    with building(engine_dir) as work:
        manifest = calibrate_into(work, manifest, config, source_dir=engine_dir)
        link_rest(engine_dir, work)
        save_manifest(work, manifest)
    return manifest


def calibrate_into(engine_dir: Path, manifest: Manifest, config: CalibConfig, source_dir: Path | None = None) -> Manifest:
    """Write the INT8 vision graph, record and cache into engine_dir; return the manifest that lists them.

    The fp32 graph is read from `source_dir` (default engine_dir)."""
    src_spec = fp32_vision(manifest, engine_dir)
    src = (source_dir or engine_dir) / src_spec.file
    report, hashes = SourceReport(used=0, skipped=[]), []
    with tempfile.TemporaryDirectory(prefix="flashvl-calib-") as tmp:
        work = Path(tmp)
        nodes = weight_nodes(onnx.load(str(src), load_external_data=False))
        tensors = {t for n in nodes for t in (n.input[0], n.output[0])}
        ranges_data = collect_ranges(src, manifest, config, tensors, report, hashes, work)
        ranges_file = work / "ranges.json"
        from onnxruntime.quantization.calibrate import save_tensors_data
        save_tensors_data(ranges_data, ranges_file)
        ranges = {name: (float(np.min(t.range_value[0])), float(np.max(t.range_value[1])))
                  for name, t in ranges_data.data.items()}
        with progress.step(f"writing {INT8_VISION_FILE} (QDQ, {len(nodes)} layers)"), quiet_onnxruntime():
            quantize_vision(src, work / "q.onnx", ranges_file, [n.name for n in nodes],
                            ranges_data.calibration_method)
            proto = load(work / "q.onnx")
            name_qdq_nodes(proto)
            save(proto, engine_dir / INT8_VISION_FILE)
    stamp_record(engine_dir / INT8_VISION_FILE, RECORD_KEY, model_record(manifest, "vision"))  # as the fp32 one
    record = {
        "graph": INT8_VISION_FILE, "source_graph": {"file": src_spec.file, "sha256": sha256_of(src)},
        "method": config.method, "percentile": PERCENTILE if config.method == "percentile" else None,
        "symmetric": True, "images": {"source": str(config.images), "used": report.used,
                                      "skipped": [{"name": n, "reason": r} for n, r in report.skipped],
                                      "decoded_rgb_sha256": hashes},
        "ranges": {k: list(v) for k, v in sorted(ranges.items())},
    }
    (engine_dir / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n")
    (engine_dir / TRT_CACHE_FILE).write_text(trt_cache_text(ranges))

    activations = ActivationQuant(bits=8, method=config.method, images=report.used, record=RECORD_FILE,
                                  trt_cache=TRT_CACHE_FILE)
    weights = WeightQuant(bits=8, block_size=0, format="qdq", lm_head=False, layers=len(nodes))
    spec = graph_spec(engine_dir / INT8_VISION_FILE, precision="int8", flavour="standard", weights=weights,
                      activations=activations)
    new_names = {INT8_VISION_FILE, INT8_VISION_FILE + ".data", RECORD_FILE, TRT_CACHE_FILE}
    files = tuple(f for f in manifest.files if f.path not in new_names) + tuple(
        file_entry(engine_dir / n, n) for n in sorted(new_names))
    graphs = dataclasses.replace(manifest.graphs, vision=spec, vision_fp32=src_spec)
    return dataclasses.replace(manifest, graphs=graphs, files=files)


def name_qdq_nodes(proto: onnx.ModelProto) -> None:
    """Give ONNX Runtime's Q/DQ nodes the hierarchical name of the layer they feed."""
    consumers = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, n)
    seen: dict[str, int] = {}
    for n in proto.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        user = n
        while user.op_type in ("QuantizeLinear", "DequantizeLinear") and user.output[0] in consumers:
            user = consumers[user.output[0]]
        base = user.name.rsplit("/", 1)[0] + "/" + n.op_type if user.name.startswith("/") else n.name
        k = seen.get(base, 0)
        seen[base] = k + 1
        n.name = base if k == 0 else f"{base}_{k}"
