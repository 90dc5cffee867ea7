"""The CUDA memory layer of the TensorRT backend: device buffers, pinned host arrays, streams,
async copies and CUDA graphs, over whichever Python CUDA binding is installed.

    open_cuda(device) -> Cuda      binding picked, device set; raises CudaUnavailable (one line + fix)
    probe_cuda()      -> (ok, why) for backend auto-selection; never raises

    Cuda.malloc(nbytes)            -> DeviceBuffer  (.ptr device address, .nbytes)
    Cuda.pinned(shape, dtype)      -> np.ndarray    page-locked, writable, freed by Cuda.close()
    Cuda.new_stream()              -> Stream        (.handle = cudaStream_t as int, for execute_async_v3)
    Cuda.h2d / d2h / d2d / memset  async on a stream; host arrays are C-contiguous NumPy arrays
    Cuda.d2d_2d(dst, dst_pitch, src, src_pitch, width_bytes, height, stream)
                                   one strided device copy: `height` pieces of `width_bytes`, each side
                                   advancing by its own pitch (cudaMemcpy2DAsync), capturable in a graph
    Cuda.begin_capture / end_capture(stream) -> CudaGraph (.launch(stream)), when Cuda.supports_graphs
    Cuda.enter_thread() / leave_thread()  make this device current on another thread (the camera
                                   loop's model thread) and undo it before that thread ends

Bindings, tried in this order:
  * cuda-python: `cuda.bindings.runtime` (cuda-bindings 12.6+ and 13.x; 13 removed the old
    spelling) or `cuda.cudart` (cuda-python 12.0-12.5).  Every call returns `(err, values...)`;
    `_check` turns a non-success `err` into CudaError.  Graphs are instantiated with
    cudaGraphInstantiateWithFlags(graph, 0), whose signature is the same in 11.4+, 12 and 13
    (plain cudaGraphInstantiate took a log buffer in 11.x).
    cudaSetDevice is per thread: other threads must set the device before using the buffers.
  * pycuda (checked against 2026.1): no stream capture in any release (only the unmerged PR
    inducer/pycuda#343), so supports_graphs is False and begin_capture raises.  It runs on the
    device's primary context, the one the CUDA runtime (and so TensorRT) uses, pushed on the
    thread that opened it: call it from that thread.
The binding is imported inside open_cuda, so this module imports without either.

Graphs replay fixed addresses: buffers and pinned arrays used in a capture must outlive the graph,
and a replay reads whatever they hold then.  While capturing, only stream work may run on that
stream (no synchronize, malloc, or copy from pageable memory).  On Jetson (integrated GPU, unified
memory) pinned and device memory are the same DRAM; the same calls work and nothing else is needed.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
from dataclasses import dataclass

import numpy as np

from runtime.errors import EngineError

log = logging.getLogger(__name__)

_NO_BINDING = ("no CUDA Python binding: neither cuda-python nor pycuda is importable; "
               "pip install 'cuda-python>=12' (its major version must not exceed the driver's CUDA, see nvidia-smi; "
               "on Jetson the CUDA of JetPack, e.g. pip install 'cuda-python==12.6.*' for JetPack 6.2) "
               "or pip install pycuda (builds against the local CUDA toolkit)")
_CAPTURE_HINT = "only stream work may be captured: no synchronize, malloc, or copy from pageable host memory"
_HINTS = {
    "cudaErrorMemoryAllocation": "the GPU is out of memory: free other GPU processes (nvidia-smi) or lower "
                                 "max_seq_len / batch",
    "cudaErrorInvalidValue": "an argument is out of range: check pointers, sizes and that the stream is this Cuda's",
    "cudaErrorInvalidPitchValue": "a 2-D copy's pitch is below its width or above the device's "
                                  "cudaDevAttrMaxPitch",
    "cudaErrorStreamCaptureUnsupported": _CAPTURE_HINT,
    "cudaErrorStreamCaptureInvalidated": _CAPTURE_HINT,
    "cudaErrorIllegalAddress": "a kernel or copy touched a bad device address; the context is lost, restart",
}
_DEFAULT_HINT = "check the arguments and nvidia-smi; rerun with CUDA_LAUNCH_BLOCKING=1 to find the failing call"


class CudaUnavailable(EngineError):
    """No usable CUDA binding, driver or GPU; the message names what is missing and how to get it."""


class CudaError(EngineError):
    """A CUDA call failed; the message names the call, the CUDA error and what to check."""


class _Missing(Exception):
    """The binding's Python package is not installed (as opposed to installed but unusable)."""


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str                # "Orin", "NVIDIA H100 80GB HBM3"
    compute_capability: str  # "major.minor", "8.7"
    total_bytes: int
    integrated: bool         # True on Jetson (unified memory)


class _Owned:
    """Something Cuda made and frees once, on its own free()/close() or on Cuda.close()."""

    def __init__(self, release):
        self._release = release

    def _free(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class DeviceBuffer(_Owned):
    def __init__(self, ptr: int, nbytes: int, release):
        super().__init__(release)
        self.ptr, self.nbytes = ptr, nbytes

    def free(self) -> None:
        self._free()


class Stream(_Owned):
    def __init__(self, obj, handle: int, release):
        super().__init__(release)
        self.obj, self.handle = obj, handle  # obj: the binding's own stream object


class CudaGraph(_Owned):
    def __init__(self, launch, release):
        super().__init__(release)
        self._launch = launch

    def launch(self, stream: Stream) -> None:
        assert self._release is not None, "CudaGraph.launch after close()"
        self._launch(stream)

    def close(self) -> None:
        self._free()


class Cuda:
    """One device through one binding; frees everything it made in close().

    The subclass per binding adds device_info(), mem_get_info(), new_stream(), synchronize(stream),
    begin_capture(stream) and end_capture(stream) -> CudaGraph.  Host arrays passed to copies must
    stay alive until the stream is synchronized; pinned arrays are dead after close().  A call that
    fails while capturing leaves the stream capturing: end_capture (it raises) takes it out.
    """

    binding: str
    supports_graphs: bool

    def __init__(self, device: int, binding: str):
        self.device, self.binding = device, binding
        self._owned: list[_Owned] = []
        self._closed = False

    def _own(self, thing):
        assert not self._closed, "Cuda used after close()"
        self._owned.append(thing)
        return thing

    def malloc(self, nbytes: int) -> DeviceBuffer:
        if nbytes < 0:
            raise ValueError(f"malloc of {nbytes} bytes")
        ptr, release = self._malloc(max(nbytes, 1))  # cudaMalloc(0) gives ptr 0; keep every buffer addressable
        return self._own(DeviceBuffer(ptr, nbytes, release))

    def pinned(self, shape, dtype) -> np.ndarray:
        shape, dtype = tuple(int(d) for d in np.atleast_1d(shape)), np.dtype(dtype)
        arr, release = self._pinned(shape, dtype, int(np.prod(shape)) * dtype.itemsize)  # [*shape] dtype
        self._own(_Owned(release))
        return arr

    def h2d(self, dst_ptr: int, src: np.ndarray, stream: Stream) -> None:
        assert src.flags.c_contiguous, "h2d source must be C-contiguous"
        self._h2d(dst_ptr, src, stream)

    def d2h(self, dst: np.ndarray, src_ptr: int, stream: Stream) -> None:
        assert dst.flags.c_contiguous and dst.flags.writeable, "d2h destination must be C-contiguous and writable"
        self._d2h(dst, src_ptr, stream)

    def d2d(self, dst_ptr: int, src_ptr: int, nbytes: int, stream: Stream) -> None:
        assert nbytes >= 0, nbytes
        self._d2d(dst_ptr, src_ptr, nbytes, stream)

    def d2d_2d(self, dst_ptr: int, dst_pitch: int, src_ptr: int, src_pitch: int, width_bytes: int, height: int,
               stream: Stream) -> None:
        """Piece r (r < height) of width_bytes: src_ptr + r * src_pitch -> dst_ptr + r * dst_pitch; no overlap."""
        assert width_bytes >= 0 and height >= 0, (width_bytes, height)
        assert dst_pitch >= width_bytes and src_pitch >= width_bytes, (dst_pitch, src_pitch, width_bytes)  # as CUDA's
        self._d2d_2d(dst_ptr, dst_pitch, src_ptr, src_pitch, width_bytes, height, stream)

    def memset(self, dst_ptr: int, value: int, nbytes: int, stream: Stream) -> None:
        assert 0 <= value < 256 and nbytes >= 0, (value, nbytes)  # a byte value, as cudaMemset takes it
        self._memset(dst_ptr, value, nbytes, stream)

    def close(self) -> None:
        """Free graphs, streams, buffers and pinned arrays, newest first; logs failures, never raises."""
        owned, self._owned = self._owned, []
        for thing in reversed(owned):
            try:
                thing._free()
            except Exception as e:  # after a sticky error every free fails; report and go on
                log.warning("cuda_mem: freeing a %s failed: %s", type(thing).__name__, e)
        if not self._closed:
            self._closed = True
            try:
                self._shutdown()
            except Exception as e:
                log.warning("cuda_mem: releasing the CUDA context failed: %s", e)

    def _shutdown(self) -> None:
        pass


# ----------------------------------------------------------------------------- cuda-python


class _CudaPython(Cuda):
    supports_graphs = True

    def __init__(self, rt, device: int, binding: str):
        super().__init__(device, binding)
        self.rt = rt
        try:
            from cuda.bindings.utils import get_cuda_native_handle  # 13.x: int(obj) is deprecated
            self._handle = get_cuda_native_handle
        except ImportError:
            self._handle = int

    def enter_thread(self) -> None:
        self._check("cudaSetDevice", self.rt.cudaSetDevice(self.device))  # per thread; the primary context

    def leave_thread(self) -> None:
        pass  # the runtime API keeps nothing per thread that needs undoing

    def _check(self, call: str, result):
        err, *values = result
        if err != self.rt.cudaError_t.cudaSuccess:
            name = _text(self.rt.cudaGetErrorName(err)[1])
            raise CudaError(f"{call} failed: {name} ({_text(self.rt.cudaGetErrorString(err)[1])}); "
                            f"{_HINTS.get(name, _DEFAULT_HINT)}")
        return values[0] if len(values) == 1 else tuple(values)

    def device_info(self) -> DeviceInfo:
        p = self._check("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(self.device))
        return DeviceInfo(self.device, _text(p.name), f"{p.major}.{p.minor}", int(p.totalGlobalMem), bool(p.integrated))

    def mem_get_info(self) -> tuple[int, int]:
        free, total = self._check("cudaMemGetInfo", self.rt.cudaMemGetInfo())
        return int(free), int(total)

    def _malloc(self, nbytes):
        ptr = int(self._check("cudaMalloc", self.rt.cudaMalloc(nbytes)))
        return ptr, lambda: self._check("cudaFree", self.rt.cudaFree(ptr))

    def _pinned(self, shape, dtype, nbytes):
        ptr = int(self._check("cudaMallocHost", self.rt.cudaMallocHost(max(nbytes, 1))))
        raw = (ctypes.c_byte * max(nbytes, 1)).from_address(ptr)  # no copy: NumPy views the pinned bytes
        arr = np.frombuffer(raw, np.uint8, nbytes).view(dtype).reshape(shape)  # [nbytes] u8 -> [*shape] dtype
        return arr, lambda: self._check("cudaFreeHost", self.rt.cudaFreeHost(ptr))

    def new_stream(self) -> Stream:
        # Non-blocking: no implicit sync with the legacy default stream, which capture would reject.
        s = self._check("cudaStreamCreateWithFlags", self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking))
        return self._own(Stream(s, int(self._handle(s)), lambda: self._check("cudaStreamDestroy",
                                                                              self.rt.cudaStreamDestroy(s))))

    def _copy(self, dst: int, src: int, nbytes: int, kind: str, stream: Stream) -> None:
        kind = getattr(self.rt.cudaMemcpyKind, kind)
        self._check("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream.obj))

    def _h2d(self, dst_ptr, src, stream):
        self._copy(dst_ptr, src.ctypes.data, src.nbytes, "cudaMemcpyHostToDevice", stream)

    def _d2h(self, dst, src_ptr, stream):
        self._copy(dst.ctypes.data, src_ptr, dst.nbytes, "cudaMemcpyDeviceToHost", stream)

    def _d2d(self, dst_ptr, src_ptr, nbytes, stream):
        self._copy(dst_ptr, src_ptr, nbytes, "cudaMemcpyDeviceToDevice", stream)

    def _d2d_2d(self, dst_ptr, dst_pitch, src_ptr, src_pitch, width_bytes, height, stream):
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        self._check("cudaMemcpy2DAsync", self.rt.cudaMemcpy2DAsync(dst_ptr, dst_pitch, src_ptr, src_pitch, width_bytes,
                                                                   height, kind, stream.obj))

    def _memset(self, dst_ptr, value, nbytes, stream):
        self._check("cudaMemsetAsync", self.rt.cudaMemsetAsync(dst_ptr, value, nbytes, stream.obj))

    def synchronize(self, stream: Stream) -> None:
        self._check("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(stream.obj))

    def begin_capture(self, stream: Stream) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check("cudaStreamBeginCapture", self.rt.cudaStreamBeginCapture(stream.obj, mode))

    def end_capture(self, stream: Stream) -> CudaGraph:
        try:
            graph = self._check("cudaStreamEndCapture", self.rt.cudaStreamEndCapture(stream.obj))
        except CudaError:
            self.rt.cudaGetLastError()  # a failed capture leaves its error behind; later calls must not see it
            raise
        try:
            exe = self._check("cudaGraphInstantiateWithFlags", self.rt.cudaGraphInstantiateWithFlags(graph, 0))
        finally:  # the executable graph keeps its own copy of the nodes
            self._check("cudaGraphDestroy", self.rt.cudaGraphDestroy(graph))
        return self._own(CudaGraph(lambda s: self._check("cudaGraphLaunch", self.rt.cudaGraphLaunch(exe, s.obj)),
                                   lambda: self._check("cudaGraphExecDestroy", self.rt.cudaGraphExecDestroy(exe))))


def _open_cuda_python(device: int) -> Cuda:
    try:
        from cuda.bindings import runtime as rt  # cuda-bindings 12.6+ and 13.x
    except ImportError as e:
        _missing_or_broken(e, "cuda-python", ("cuda", "cuda.bindings", "cuda.bindings.runtime"), raise_missing=False)
        try:
            from cuda import cudart as rt  # cuda-python 12.0-12.5
        except ImportError as e:
            _missing_or_broken(e, "cuda-python", ("cuda", "cuda.cudart"))
    binding = _binding_name("cuda-python", "cuda-bindings")
    ok = rt.cudaError_t.cudaSuccess
    try:
        err, count = rt.cudaGetDeviceCount()
    except RuntimeError as e:  # cuda-python <= 12.5 without libcuda: "Failed to dlopen libcuda.so.1"
        raise CudaUnavailable(f"{binding} found no NVIDIA driver ({e}): install the NVIDIA driver and check "
                              f"that nvidia-smi lists a GPU") from None
    if err != ok or not count:
        name = _text(rt.cudaGetErrorName(err)[1]) if err != ok else "0 devices"
        driver = rt.cudaDriverGetVersion()
        driver = driver[1] if driver[0] == ok else 0  # 0: libcuda.so was not found
        if driver == 0:
            raise CudaUnavailable(f"{binding} found no NVIDIA driver (cudaDriverGetVersion 0, cudaGetDeviceCount: "
                                  f"{name}): install the NVIDIA driver and check that nvidia-smi lists a GPU")
        if name == "cudaErrorInsufficientDriver":
            need = rt.cudaRuntimeGetVersion()[1]
            raise CudaUnavailable(f"the NVIDIA driver supports CUDA {_cuda_version(driver)} but {binding} needs "
                                  f"{_cuda_version(need)} ({name}): update the driver or "
                                  f"pip install 'cuda-python=={driver // 1000}.*'")
        raise CudaUnavailable(f"{binding} sees no usable GPU (cudaGetDeviceCount: {name}, driver CUDA "
                              f"{_cuda_version(driver)}): check nvidia-smi and CUDA_VISIBLE_DEVICES")
    if not 0 <= device < count:
        raise CudaUnavailable(f"GPU {device} requested but {count} visible: pick 0..{count - 1} "
                              f"or check CUDA_VISIBLE_DEVICES")
    cuda = _CudaPython(rt, device, binding)
    cuda._check("cudaSetDevice", rt.cudaSetDevice(device))
    return cuda


# ----------------------------------------------------------------------------- pycuda


class _PyCuda(Cuda):
    supports_graphs = False

    def __init__(self, drv, device: int, binding: str):
        super().__init__(device, binding)
        self.drv, self.dev = drv, drv.Device(device)
        self.ctx = self._call(self.dev.retain_primary_context)
        self.ctx.push()

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except self.drv.Error as e:  # pycuda's text names the driver call: "cuMemAlloc failed: out of memory"
            hint = _HINTS["cudaErrorMemoryAllocation"] if "out of memory" in str(e) else _DEFAULT_HINT
            raise CudaError(f"{e}; {hint}") from None

    def device_info(self) -> DeviceInfo:
        major, minor = self.dev.compute_capability()
        integrated = self.dev.get_attribute(self.drv.device_attribute.INTEGRATED)
        return DeviceInfo(self.device, self.dev.name(), f"{major}.{minor}", int(self.dev.total_memory()),
                          bool(integrated))

    def mem_get_info(self) -> tuple[int, int]:
        free, total = self._call(self.drv.mem_get_info)
        return int(free), int(total)

    def _malloc(self, nbytes):
        alloc = self._call(self.drv.mem_alloc, nbytes)
        return int(alloc), alloc.free

    def _pinned(self, shape, dtype, nbytes):
        raw = self._call(self.drv.pagelocked_empty, max(nbytes, 1), np.uint8)  # .base owns the pages
        return raw[:nbytes].view(dtype).reshape(shape), raw.base.free  # [nbytes] u8 -> [*shape] dtype

    def new_stream(self) -> Stream:
        s = self._call(self.drv.Stream, 1)  # 1 = CU_STREAM_NON_BLOCKING
        return self._own(Stream(s, int(s.handle), lambda: None))  # pycuda destroys it with the object

    def _h2d(self, dst_ptr, src, stream):
        self._call(self.drv.memcpy_htod_async, dst_ptr, src, stream.obj)

    def _d2h(self, dst, src_ptr, stream):
        self._call(self.drv.memcpy_dtoh_async, dst, src_ptr, stream.obj)

    def _d2d(self, dst_ptr, src_ptr, nbytes, stream):
        self._call(self.drv.memcpy_dtod_async, dst_ptr, src_ptr, nbytes, stream.obj)

    def _d2d_2d(self, dst_ptr, dst_pitch, src_ptr, src_pitch, width_bytes, height, stream):
        copy = self.drv.Memcpy2D()
        copy.set_src_device(src_ptr)
        copy.set_dst_device(dst_ptr)
        copy.src_pitch, copy.dst_pitch, copy.width_in_bytes, copy.height = src_pitch, dst_pitch, width_bytes, height
        self._call(copy, stream.obj)  # called with a stream: cuMemcpy2DAsync on it

    def _memset(self, dst_ptr, value, nbytes, stream):
        self._call(self.drv.memset_d8_async, dst_ptr, value, nbytes, stream.obj)

    def synchronize(self, stream: Stream) -> None:
        self._call(stream.obj.synchronize)

    def begin_capture(self, stream: Stream) -> None:
        raise CudaError(f"CUDA graphs need cuda-python; {self.binding} has no stream capture: "
                        f"pip install 'cuda-python>=12' or run without CUDA graphs")

    end_capture = begin_capture

    def enter_thread(self) -> None:
        self.ctx.push()  # the primary context, current on this thread too

    def leave_thread(self) -> None:
        self.drv.Context.pop()

    def _shutdown(self) -> None:
        self.ctx.pop()
        self.ctx.detach()


def _open_pycuda(device: int) -> Cuda:
    try:
        import pycuda.driver as drv
    except ImportError as e:  # also when libcuda.so.1 is missing: pycuda links the driver
        _missing_or_broken(e, "pycuda", ("pycuda", "pycuda.driver"))
    binding = _binding_name("pycuda")
    try:
        drv.init()
        count = drv.Device.count()
    except drv.Error as e:
        raise CudaUnavailable(f"{binding} cannot start CUDA ({e}): check nvidia-smi and CUDA_VISIBLE_DEVICES") from None
    if not 0 <= device < count:
        raise CudaUnavailable(f"GPU {device} requested but {count} visible: check nvidia-smi and CUDA_VISIBLE_DEVICES")
    return _PyCuda(drv, device, binding)


# ----------------------------------------------------------------------------- entry points


def open_cuda(device: int = 0) -> Cuda:
    """cuda-python if it works, else pycuda; CudaUnavailable says why neither does."""
    reasons = []
    for opener in (_open_cuda_python, _open_pycuda):
        try:
            return opener(device)
        except _Missing:
            continue
        except CudaUnavailable as e:
            reasons.append(str(e))
    raise CudaUnavailable("; ".join(reasons) if reasons else _NO_BINDING)


def probe_cuda() -> tuple[bool, str]:
    """(True, "NVIDIA H100 80GB HBM3 sm_90 via cuda-python 12.9.10") or (False, why); never raises."""
    try:
        cuda = open_cuda()
        try:
            info = cuda.device_info()
        finally:
            cuda.close()
    except CudaUnavailable as e:
        return False, str(e)
    except Exception as e:  # a probe must not take the caller down, whatever the binding raises
        return False, f"CUDA probe failed: {type(e).__name__}: {e}"
    return True, f"{info.name} sm_{info.compute_capability.replace('.', '')} via {cuda.binding}"


def _missing_or_broken(e: ImportError, package: str, own_modules: tuple[str, ...], raise_missing=True) -> None:
    """Not installed (one of its own modules is absent) -> _Missing; installed but failing -> CudaUnavailable."""
    if e.name not in own_modules:
        raise CudaUnavailable(f"{package} is installed but does not import ({e}): check that nvidia-smi works "
                              f"and reinstall {package}") from None
    if raise_missing:
        raise _Missing from None


def _binding_name(*dists: str) -> str:
    for d in dists:
        try:
            return f"{d} {importlib.metadata.version(d)}"
        except importlib.metadata.PackageNotFoundError:
            pass
    return dists[0]


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"  # 12090 -> "12.9"


def _text(b) -> str:
    return (b.decode(errors="replace") if isinstance(b, bytes) else str(b)).split("\0")[0].strip()
