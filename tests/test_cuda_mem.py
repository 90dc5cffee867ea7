"""runtime.cuda_mem: copies, pinned memory and CUDA graphs on a GPU; its missing-binding / driver / GPU
errors everywhere (with fake bindings where the real one is absent)."""

from __future__ import annotations

import enum
import importlib.abc
import importlib.util
import re
import sys
import types

import numpy as np
import pytest

from runtime.cuda_mem import CudaError, CudaUnavailable, open_cuda, probe_cuda
from tests.conftest import run_cli

HAVE_GPU, WHY = probe_cuda()
gpu = pytest.mark.skipif(not HAVE_GPU, reason=f"needs a CUDA GPU and binding: {WHY}")
MiB = 1 << 20


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing
        return False


HAVE_CUDA_PYTHON = _importable("cuda.bindings.runtime") or _importable("cuda.cudart")


@pytest.fixture()
def cuda():
    c = open_cuda()
    yield c
    c.close()


def _cupy():
    """CuPy, when present and working, reads our device buffers independently of the binding."""
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
        return cupy
    except Exception:
        return None


# ----------------------------------------------------------------------------- on a GPU


@gpu
def test_device_info_and_memory(cuda):
    info = cuda.device_info()
    assert info.index == 0 and isinstance(info.name, str) and info.name
    assert re.fullmatch(r"\d+\.\d+", info.compute_capability), info.compute_capability
    assert info.total_bytes > 256 * MiB and isinstance(info.integrated, bool)
    free, total = cuda.mem_get_info()
    assert 0 < free <= total and abs(total - info.total_bytes) <= 64 * MiB
    assert cuda.binding.split()[0] in ("cuda-python", "cuda-bindings", "pycuda")
    stream = cuda.new_stream()
    assert isinstance(stream.handle, int) and stream.handle != 0  # a real stream, not the legacy default


@gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64])
def test_h2d_d2h_roundtrip_is_exact(cuda, dtype):
    rng = np.random.default_rng(0)
    x = (rng.integers(-2**62, 2**62, (3, 5, 7)) if dtype == np.int64 else rng.standard_normal((3, 5, 7))).astype(dtype)
    buf, stream = cuda.malloc(x.nbytes), cuda.new_stream()
    back = np.full_like(x, 7)
    cuda.h2d(buf.ptr, x, stream)
    cuda.d2h(back, buf.ptr, stream)
    cuda.synchronize(stream)
    assert back.tobytes() == x.tobytes()

    cp = _cupy()
    if cp is not None:  # the bytes really are at buf.ptr on the device
        mem = cp.cuda.UnownedMemory(buf.ptr, x.nbytes, buf)
        assert cp.asnumpy(cp.ndarray(x.shape, x.dtype, cp.cuda.MemoryPointer(mem, 0))).tobytes() == x.tobytes()


@gpu
def test_d2d_and_memset(cuda):
    x = np.arange(256, dtype=np.uint8)
    a, b, stream = cuda.malloc(256), cuda.malloc(256), cuda.new_stream()
    out = np.zeros(256, np.uint8)
    cuda.h2d(a.ptr, x, stream)
    cuda.d2d(b.ptr, a.ptr, 256, stream)
    cuda.memset(b.ptr + 16, 0xAB, 32, stream)  # bytes 16..47
    cuda.d2h(out, b.ptr, stream)
    cuda.synchronize(stream)
    want = x.copy()
    want[16:48] = 0xAB
    np.testing.assert_array_equal(out, want)


@gpu
def test_pinned_arrays_are_writable_numpy(cuda):
    for shape, dtype in [((2, 3), np.float16), ((4,), np.int64), (5, np.float32), ((0, 3), np.float32)]:
        arr = cuda.pinned(shape, dtype)
        assert isinstance(arr, np.ndarray) and arr.dtype == np.dtype(dtype)
        assert arr.shape == (tuple(shape) if isinstance(shape, tuple) else (shape,))
        assert arr.flags.writeable and arr.flags.c_contiguous
        arr[...] = 3
        assert (arr == 3).all()


@gpu
def test_graph_replays_read_live_memory_at_fixed_addresses(cuda):
    n = 4096
    inp, out = cuda.pinned((n,), np.float32), cuda.pinned((n,), np.float32)
    a, b, stream = cuda.malloc(inp.nbytes), cuda.malloc(inp.nbytes), cuda.new_stream()
    if not cuda.supports_graphs:
        with pytest.raises(CudaError, match="CUDA graphs need cuda-python"):
            cuda.begin_capture(stream)
        return
    inp[:], out[:] = 0, -1
    cuda.begin_capture(stream)
    cuda.h2d(a.ptr, inp, stream)                  # pinned inp -> A
    cuda.d2d(b.ptr, a.ptr, inp.nbytes, stream)    # A -> B
    cuda.d2h(out, b.ptr, stream)                  # B -> pinned out
    graph = cuda.end_capture(stream)
    cuda.synchronize(stream)
    assert (out == -1).all()  # capturing records the copies, it does not run them

    rng = np.random.default_rng(1)
    for _ in range(2):
        inp[:] = rng.standard_normal(n)
        graph.launch(stream)
        cuda.synchronize(stream)
        np.testing.assert_array_equal(out, inp)
    graph.close()
    graph.close()


@gpu
def test_close_frees_everything_and_is_idempotent():
    c = open_cuda()
    free0 = c.mem_get_info()[0]
    kept, freed = c.malloc(256 * MiB), c.malloc(8 * MiB)
    c.pinned((1024,), np.float32)
    stream = c.new_stream()
    if c.supports_graphs:
        c.begin_capture(stream)
        c.d2d(kept.ptr, freed.ptr, 8 * MiB, stream)
        c.end_capture(stream)
    free1 = c.mem_get_info()[0]
    assert free1 < free0 - 200 * MiB
    freed.free()
    freed.free()
    c.close()
    c.close()
    kept.free()  # already freed by close: a no-op

    c2 = open_cuda()
    try:
        assert c2.mem_get_info()[0] > free1 + 200 * MiB
    finally:
        c2.close()


@gpu
def test_absurd_malloc_names_the_call_and_leaves_cuda_usable(cuda):
    with pytest.raises(CudaError) as e:
        cuda.malloc(1 << 50)  # 1 PiB
    msg = str(e.value)
    assert "cudaMalloc failed" in msg or "cuMemAlloc failed" in msg, msg
    assert "out of memory" in msg, msg
    cuda.malloc(MiB)


# ----------------------------------------------------------------------------- everywhere


def test_module_imports_without_any_binding():
    script = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("cuda", "pycuda", "torch", "cupy"):
            raise ImportError(f"blocked import of {name}")
sys.meta_path.insert(0, Block())
before = set(sys.modules)  # cuda-bindings' .pth file may already have imported the `cuda` namespace
import runtime.cuda_mem
new = set(sys.modules) - before
print(json.dumps(sorted(m for m in new if m.split(".")[0] in ("cuda", "pycuda", "torch", "cupy"))))
"""
    proc = run_cli("-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _no_binding(monkeypatch):
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ModuleNotFoundError


def test_no_binding_reason_says_what_to_install(monkeypatch):
    _no_binding(monkeypatch)
    ok, reason = probe_cuda()
    assert not ok
    for needle in ("cuda-python", "pycuda", "pip install 'cuda-python>=12'", "Jetson"):
        assert needle in reason, (needle, reason)
    with pytest.raises(CudaUnavailable) as e:
        open_cuda()
    assert str(e.value) == reason and "\n" not in reason


@pytest.mark.skipif(not HAVE_CUDA_PYTHON or HAVE_GPU, reason="needs cuda-python installed on a machine without a GPU")
def test_real_cuda_python_without_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda", None)
    ok, reason = probe_cuda()
    assert not ok and "cuda-python" in reason and ("driver" in reason or "GPU" in reason), reason
    assert "nvidia-smi" in reason
    with pytest.raises(CudaUnavailable, match="cuda-python"):
        open_cuda()


class _Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100


def _fake_cuda_python(monkeypatch, count_err, count: int, driver: int, runtime: int = 12090):
    """cuda.bindings.runtime as far as open_cuda reads it before touching a device; pycuda absent.
    count_err: what cudaGetDeviceCount returns, or the exception it raises."""
    ok = _Err.cudaSuccess

    def get_device_count():
        if isinstance(count_err, Exception):
            raise count_err
        return count_err, (count if count_err == ok else None)

    rt = types.SimpleNamespace(
        cudaError_t=_Err,
        cudaGetDeviceCount=get_device_count,
        cudaDriverGetVersion=lambda: (ok, driver),
        cudaRuntimeGetVersion=lambda: (ok, runtime),
        cudaGetErrorName=lambda err: (ok, _Err(err).name.encode()),
        cudaGetErrorString=lambda err: (ok, b"fake"),
    )
    pkg, sub = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    pkg.__path__, sub.__path__, sub.runtime = [], [], rt
    monkeypatch.setitem(sys.modules, "cuda", pkg)
    monkeypatch.setitem(sys.modules, "cuda.bindings", sub)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    monkeypatch.setitem(sys.modules, "pycuda", None)


@pytest.mark.parametrize("count_err, count, driver, runtime, device, needles", [
    (_Err.cudaErrorInsufficientDriver, 0, 0, 12090, 0,
     ["found no NVIDIA driver", "cudaErrorInsufficientDriver", "install the NVIDIA driver", "nvidia-smi"]),
    (RuntimeError("Failed to dlopen libcuda.so.1"), 0, 0, 12040, 0,  # cuda-python <= 12.5 without a driver
     ["found no NVIDIA driver", "Failed to dlopen libcuda.so.1", "nvidia-smi"]),
    (_Err.cudaErrorInsufficientDriver, 0, 12020, 13000, 0,
     ["driver supports CUDA 12.2", "needs 13.0", "pip install 'cuda-python==12.*'"]),
    (_Err.cudaErrorNoDevice, 0, 12080, 12090, 0, ["no usable GPU", "cudaErrorNoDevice", "CUDA_VISIBLE_DEVICES"]),
    (_Err.cudaSuccess, 0, 12080, 12090, 0, ["no usable GPU", "0 devices"]),
    (_Err.cudaSuccess, 1, 12080, 12090, 3, ["GPU 3 requested but 1 visible", "CUDA_VISIBLE_DEVICES"]),
])
def test_cuda_python_driver_and_device_errors(monkeypatch, count_err, count, driver, runtime, device, needles):
    _fake_cuda_python(monkeypatch, count_err, count, driver, runtime)
    with pytest.raises(CudaUnavailable) as e:
        open_cuda(device)
    msg = str(e.value)
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_pycuda_without_driver_says_so(monkeypatch):
    class NoDriver(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "pycuda.driver":  # what pycuda's extension raises without libcuda
                raise ImportError("libcuda.so.1: cannot open shared object file", name="pycuda._driver")
            return None

    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    pkg = types.ModuleType("pycuda")
    pkg.__path__ = []
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.delitem(sys.modules, "pycuda.driver", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoDriver(), *sys.meta_path])
    ok, reason = probe_cuda()
    assert not ok and "pycuda" in reason and "libcuda.so.1" in reason and "nvidia-smi" in reason, reason
