"""Which backend runs an engine folder: `--backend auto|onnxruntime|trt`, and why.

    auto         TensorRT when the folder has plans, tensorrt imports, a CUDA GPU is there and
                 the plans were built for this TensorRT, this GPU and these ONNX graphs; else
                 ONNX Runtime on the CPU, with the reason (and how to get TensorRT) said once
    trt          TensorRT or an EngineError with that reason and its fix
    onnxruntime  ONNX Runtime on the CPU

`plan_mismatch` and `decide` are pure; `choose_backend` gathers the facts (importing
tensorrt and opening the GPU only when the folder has plans) and returns the open CUDA
handle so the backend does not open it twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime import cuda_mem, trt_compat
from runtime.errors import EngineError
from runtime.manifest import Manifest

BACKENDS = ("auto", "onnxruntime", "trt")
TENSORRT, ONNXRUNTIME = "tensorrt", "onnxruntime"


@dataclass(frozen=True)
class BackendChoice:
    name: str  # TENSORRT | ONNXRUNTIME
    reason: str  # one line: why this backend

    def line(self) -> str:
        return f"backend: {self.name} ({self.reason})"


def machine(trt_version: str, gpu_name: str, compute_capability: str) -> str:
    return f"TensorRT {trt_version} on {gpu_name} (sm {compute_capability})"


def check_requested(requested: str) -> None:
    if requested not in BACKENDS:
        raise EngineError(f"--backend must be one of {list(BACKENDS)}, got {requested!r}")


def rebuild_hint(engine_dir) -> str:
    return f"rebuild them here with `python -m export.trt --engine {engine_dir}`"


def plan_mismatch(engine_dir, manifest: Manifest, trt_version: str, gpu_name: str, compute_capability: str) -> str:
    """'' when the folder's plans were built for this TensorRT, this GPU and the current graphs; else why not."""
    t = manifest.trt
    if t is None:
        return f"{engine_dir} has no TensorRT plans; build them on the GPU with `python -m export.trt --engine " \
               f"{engine_dir}`"
    built = machine(t.tensorrt_version, t.gpu_name, t.compute_capability)
    here = machine(trt_version, gpu_name, compute_capability)
    if built != here:
        return f"the plans in {engine_dir} were built with {built}, this machine has {here}; plans run only " \
               f"where they were built: {rebuild_hint(engine_dir)}"
    hashes = {f.path: f.sha256 for f in manifest.files}
    for role, plan, graph in (("vision", t.vision, manifest.graphs.vision),
                              ("decoder", t.decoder, manifest.graphs.decoder)):
        if plan.onnx != graph.file or plan.onnx_sha256 != hashes.get(graph.file):
            return f"{engine_dir}/{plan.file} was built from {plan.onnx}, but the {role} graph is now " \
                   f"{graph.file} (re-exported or recalibrated since); {rebuild_hint(engine_dir)}"
    return ""


def decide(requested: str, trt_problem: str, gpu_problem: str, mismatch: str,
           built_for: str = "") -> BackendChoice:
    """The choice from the facts; each *_problem / mismatch is '' when fine, else the reason."""
    check_requested(requested)
    if requested == ONNXRUNTIME:
        return BackendChoice(ONNXRUNTIME, "requested with --backend onnxruntime")
    problem = next((p for p in (trt_problem, gpu_problem, mismatch) if p), "")
    if problem:
        if requested == "trt":
            raise EngineError(f"--backend trt: {problem}; or run on the CPU with --backend onnxruntime")
        return BackendChoice(ONNXRUNTIME, problem)
    return BackendChoice(TENSORRT, f"plans built for {built_for} match this machine")


def choose_backend(requested: str, engine_dir: Path, manifest: Manifest):
    """(BackendChoice, open Cuda or None): probes only as far as the decision needs."""
    check_requested(requested)  # before any probing
    t = manifest.trt
    if requested == ONNXRUNTIME:
        return decide(requested, "", "", ""), None
    if t is None:
        return decide(requested, "", "", plan_mismatch(engine_dir, manifest, "", "", "")), None
    try:
        version = trt_compat.version_string(trt_compat.import_tensorrt())
    except EngineError as e:
        return decide(requested, str(e), "", ""), None
    ok, why = cuda_mem.probe_cuda()
    if not ok:
        return decide(requested, "", why, ""), None
    cuda = cuda_mem.open_cuda()
    info = cuda.device_info()
    mismatch = plan_mismatch(engine_dir, manifest, version, info.name, info.compute_capability)
    try:
        choice = decide(requested, "", "", mismatch, machine(t.tensorrt_version, t.gpu_name, t.compute_capability))
    except EngineError:
        cuda.close()
        raise
    if choice.name != TENSORRT:
        cuda.close()
        cuda = None
    return choice, cuda
