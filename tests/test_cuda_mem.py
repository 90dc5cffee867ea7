"""runtime.cuda_mem: copies, pinned memory and CUDA graphs on a GPU; its missing-binding / driver / GPU
errors everywhere (with fake bindings where the real one is absent).  The 2-D copy runs against NumPy
on every binding that is importable and has a GPU, and on the stand-in (tests/trt_standin.py) everywhere."""

from __future__ import annotations

import enum
import importlib.abc
import importlib.util
import re
import sys
import types

import numpy as np
import pytest

from runtime import cuda_mem
from runtime.cuda_mem import CudaError, CudaUnavailable, Stream, open_cuda, probe_cuda
from tests.conftest import run_cli
from tests.extras import needs

HAVE_GPU, WHY = probe_cuda()
gpu = pytest.mark.skipif(not HAVE_GPU, reason=f"needs a CUDA GPU and binding: {WHY}")
MiB = 1 << 20


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing
        return False


HAVE_CUDA_PYTHON = _importable("cuda.bindings.runtime") or _importable("cuda.cudart")
HAVE_PYCUDA = _importable("pycuda.driver")


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


# ----------------------------------------------------------------------------- 2-D copies, per binding


@pytest.fixture(params=["stand-in", "cuda-python", "pycuda"])
def each_cuda(request):
    """A Cuda on one binding (each one's own open, not open_cuda's choice), or a skip saying why not."""
    if request.param == "stand-in":
        needs("export", only=("onnx",))  # tests.trt_standin imports onnx
        from tests.trt_standin import HostCuda, HostDevice

        c = HostCuda(HostDevice())
    else:
        installed, opener = {"cuda-python": (HAVE_CUDA_PYTHON, cuda_mem._open_cuda_python),
                             "pycuda": (HAVE_PYCUDA, cuda_mem._open_pycuda)}[request.param]
        if not installed:
            pytest.skip(f"{request.param} is not installed")
        try:
            c = opener(0)
        except CudaUnavailable as e:
            pytest.skip(f"needs a CUDA GPU: {e}")
    yield c
    c.close()


def _pitched_copy(dst: np.ndarray, dst_off, dst_pitch, src: np.ndarray, src_off, src_pitch, width, height):
    """What d2d_2d does, on the bytes of NumPy arrays: piece r of `width` bytes, each side at its own pitch."""
    for r in range(height):
        dst[dst_off + r * dst_pitch:][:width] = src[src_off + r * src_pitch:][:width]


@pytest.mark.parametrize("dst_off, dst_pitch, src_off, src_pitch, width, height", [
    (0, 128, 256, 1024, 128, 7),   # gather: one slot's rows of a [T, 8 slots, 128 B] block -> contiguous
    (384, 1024, 0, 128, 128, 7),   # scatter: contiguous rows -> one slot's rows
    (512, 2048, 256, 768, 512, 9),  # one row of every (layer, K/V) block, pitches of whole blocks
    (8, 200, 24, 136, 96, 5),      # no alignment anywhere
    (64, 64, 0, 64, 64, 1),        # one piece
])
def test_d2d_2d_equals_numpy(each_cuda, dst_off, dst_pitch, src_off, src_pitch, width, height):
    cuda, rng = each_cuda, np.random.default_rng(width * height)
    x = cuda.pinned(src_off + (height - 1) * src_pitch + width + 64, np.uint8)  # the stand-in copies pinned only
    before, out = (cuda.pinned(dst_off + (height - 1) * dst_pitch + width + 64, np.uint8) for _ in range(2))
    x[:], before[:] = rng.integers(0, 256, x.size, dtype=np.uint8), 0xEE  # 0xEE: bytes between pieces stay
    src, dst, stream = cuda.malloc(x.nbytes), cuda.malloc(before.nbytes), cuda.new_stream()
    cuda.h2d(src.ptr, x, stream)
    cuda.h2d(dst.ptr, before, stream)
    cuda.d2d_2d(dst.ptr + dst_off, dst_pitch, src.ptr + src_off, src_pitch, width, height, stream)
    cuda.d2h(out, dst.ptr, stream)
    cuda.synchronize(stream)
    want = before.copy()
    _pitched_copy(want, dst_off, dst_pitch, x, src_off, src_pitch, width, height)
    np.testing.assert_array_equal(out, want)


def test_d2d_2d_is_captured_and_replayed(each_cuda):
    """A 2-D copy is stream work: a graph records it and every launch copies what the source holds then."""
    cuda = each_cuda
    if not cuda.supports_graphs:
        pytest.skip(f"{cuda.binding} has no stream capture")
    width, src_pitch, dst_pitch, height = 128, 1024, 256, 6
    a, b = cuda.malloc(src_pitch * height), cuda.malloc(dst_pitch * height)
    stream = cuda.new_stream()
    x, out = cuda.pinned(src_pitch * height, np.uint8), cuda.pinned(dst_pitch * height, np.uint8)
    cuda.memset(b.ptr, 0, b.nbytes, stream)
    cuda.synchronize(stream)
    cuda.begin_capture(stream)
    cuda.d2d_2d(b.ptr, dst_pitch, a.ptr, src_pitch, width, height, stream)
    graph = cuda.end_capture(stream)
    rng = np.random.default_rng(2)
    for _ in range(2):
        x[:] = rng.integers(0, 256, x.size, dtype=np.uint8)
        cuda.h2d(a.ptr, x, stream)
        graph.launch(stream)
        cuda.d2h(out, b.ptr, stream)
        cuda.synchronize(stream)
        want = np.zeros_like(out)
        _pitched_copy(want, 0, dst_pitch, x, 0, src_pitch, width, height)
        np.testing.assert_array_equal(out, want)
    graph.close()


def _stream() -> Stream:
    return Stream("the binding's stream", 7, None)


def test_d2d_2d_reaches_cuda_python_as_cudaMemcpy2DAsync():
    """Argument order and error text, on a fake `cuda.bindings.runtime` (the GPU tests above run the real one)."""
    calls, result = [], [(_Err.cudaSuccess,)]
    rt = types.SimpleNamespace(
        cudaError_t=_Err,
        cudaMemcpyKind=types.SimpleNamespace(cudaMemcpyDeviceToDevice="D2D"),
        cudaMemcpy2DAsync=lambda *args: calls.append(args) or result[0],
        cudaGetErrorName=lambda err: (_Err.cudaSuccess, _Err(err).name.encode()),
        cudaGetErrorString=lambda err: (_Err.cudaSuccess, b"invalid pitch argument"),
    )
    c = cuda_mem._CudaPython(rt, 0, "cuda-python (fake)")
    c.d2d_2d(4096, 128, 8192, 1024, 96, 7, _stream())
    assert calls == [(4096, 128, 8192, 1024, 96, 7, "D2D", "the binding's stream")]
    result[0] = (_Err.cudaErrorInvalidPitchValue,)
    with pytest.raises(CudaError) as e:
        c.d2d_2d(4096, 128, 8192, 1024, 96, 7, _stream())
    assert str(e.value).startswith("cudaMemcpy2DAsync failed: cudaErrorInvalidPitchValue (invalid pitch argument); "
                                   "a 2-D copy's pitch"), e.value


def test_d2d_2d_reaches_pycuda_as_an_async_memcpy2d():
    """pycuda's Memcpy2D, called with the stream (its async form), on a fake `pycuda.driver`."""
    made = []

    class Error(Exception):
        pass

    class Memcpy2D:
        def __init__(self):
            made.append(self)
            self.calls = []

        def set_src_device(self, ptr):
            self.src = ptr

        def set_dst_device(self, ptr):
            self.dst = ptr

        def __call__(self, stream):
            if self.height > 100:
                raise Error("cuMemcpy2DAsync failed: invalid argument")
            self.calls.append(stream)

    context = types.SimpleNamespace(push=lambda: None)
    drv = types.SimpleNamespace(Error=Error, Memcpy2D=Memcpy2D,
                                Device=lambda i: types.SimpleNamespace(retain_primary_context=lambda: context))
    c = cuda_mem._PyCuda(drv, 0, "pycuda (fake)")
    c.d2d_2d(4096, 128, 8192, 1024, 96, 7, _stream())
    (m,) = made
    got = (m.dst, m.dst_pitch, m.src, m.src_pitch, m.width_in_bytes, m.height, m.calls)
    assert got == (4096, 128, 8192, 1024, 96, 7, ["the binding's stream"])
    with pytest.raises(CudaError, match="cuMemcpy2DAsync failed: invalid argument; "):
        c.d2d_2d(4096, 128, 8192, 1024, 96, 101, _stream())


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
    cudaErrorInvalidPitchValue = 12
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
