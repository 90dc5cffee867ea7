"""TensorRT 10.3 (JetPack 6) through 11.x: every call whose spelling differs, in one place.

What differs, and what each function picks:
    network flags     10.x: STRONGLY_TYPED is a creation flag; 11.x: every network is strongly
                      typed and the flag may be gone              -> network_flags()
    engine memory     10.0: device_memory_size; 10.1+: device_memory_size_v2 (11.x: only v2)
                                                                  -> device_memory_size()
    context memory    10.0: context.device_memory = ptr; 10.1+: set_device_memory(ptr, size)
                                                                  -> set_device_memory()
    TF32              a builder flag in both; cleared for fp32 graphs, so fp32 plans compute
                      in fp32 and keep greedy parity with the ONNX graph -> clear_tf32()

Everything else the project uses has one spelling from 10.3 to 11.x: name-based I/O
(`get_tensor_name`, `set_input_shape`, `set_tensor_address`, `execute_async_v3`), optimization
profiles, timing caches, `build_serialized_network`, `ExecutionContextAllocationStrategy`.
TensorRT 10.0-10.2 and 8.x are refused: JetPack 6 ships 10.3, and plans are built on the device.
"""

from __future__ import annotations

import importlib

from runtime.errors import EngineError

MIN_VERSION = (10, 3)
MAX_MAJOR = 11


class TrtUnavailable(EngineError):
    """The tensorrt module is missing or of an unsupported version."""


def import_tensorrt():
    """The `tensorrt` module, or TrtUnavailable saying where to get it."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as e:
        raise TrtUnavailable(f"the tensorrt Python module is not installed ({e}); on Jetson it comes with JetPack "
                             f"(`sudo apt install python3-libnvinfer`, use the system python3 or a venv made with "
                             f"--system-site-packages), on a desktop GPU `pip install tensorrt`") from None
    version_of(trt)  # refuse unsupported versions before any other call
    return trt


def version_of(trt) -> tuple[int, int, int]:
    raw = str(getattr(trt, "__version__", ""))
    try:
        parts = tuple(int(p) for p in raw.split(".")[:3])
        parts = parts + (0,) * (3 - len(parts))
    except ValueError:
        raise TrtUnavailable(f"tensorrt reports version {raw!r}, which is not a version number") from None
    if parts[:2] < MIN_VERSION or parts[0] > MAX_MAJOR:
        raise TrtUnavailable(f"TensorRT {raw} is installed; this runtime supports {MIN_VERSION[0]}.{MIN_VERSION[1]} "
                             f"(JetPack 6) through {MAX_MAJOR}.x; install one of those")
    return parts  # type: ignore[return-value]


def version_string(trt) -> str:
    return ".".join(map(str, version_of(trt)))


def network_flags(trt) -> int:
    """Creation flags of a strongly typed network: precision comes from the ONNX's types."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if version_of(trt)[0] >= 11 or flag is None:
        return 0  # 11.x: strongly typed is the only kind
    return 1 << int(flag)


def clear_tf32(trt, config) -> None:
    flag = getattr(trt.BuilderFlag, "TF32", None)
    if flag is not None:
        config.clear_flag(flag)


def device_memory_size(engine) -> int:
    """Activation memory an execution context needs, the largest over the engine's profiles."""
    if hasattr(engine, "device_memory_size_v2"):
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)


def user_managed_context(trt, engine):
    """An execution context whose activation memory the caller provides (and may share)."""
    context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    if context is None:
        raise EngineError("TensorRT could not create an execution context (see its log above); the GPU may be out "
                          "of memory: close other GPU programs, or rebuild with --low-memory")
    return context


def set_device_memory(context, ptr: int, nbytes: int) -> None:
    if hasattr(context, "set_device_memory"):
        context.set_device_memory(ptr, nbytes)
    else:
        context.device_memory = ptr
