"""Stand-ins for TensorRT and the CUDA layer, so the TensorRT code paths run where neither exists.

FakeTrt is a module-like object with the TensorRT calls the project makes (builder: Builder,
OnnxParser, optimization profiles, timing cache, build_serialized_network; runtime: Runtime,
engine, execution contexts) over ONNX Runtime.  A "plan" is the ONNX model's bytes and the
profiles; `execute_async_v3` runs the graph with ONNX Runtime, reading inputs from and writing
outputs to the raw addresses the backend bound, so a wrong offset, shape or profile shows as
wrong tokens or an error, as on a GPU.  It refuses what TensorRT refuses: a shape outside the
context's profile, an input without a shape, an I/O tensor without an address, a USER_MANAGED
context without device memory, a profile missing an input, a weakly typed 10.x network.

HostCuda implements runtime.cuda_mem's Cuda interface over host memory: "device pointers" are
host addresses, every access is bounds-checked against the allocations (a bad pointer fails
the test instead of crashing it), stream capture records the operations and CudaGraph.launch
replays them with capture-time addresses and shapes, as a CUDA graph does.  HostDevice counts
bytes copied each way, device-to-device copies (1-D or 2-D, one each), engine runs and graph
launches for the tests' assertions.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import json
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort

from runtime.cuda_mem import CudaError, DeviceInfo

PLAN_MAGIC = b"STANDIN-TRT-PLAN\n"


# ----------------------------------------------------------------------------- CUDA over host memory


class HostDevice:
    """What every HostCuda handle shares: allocations, captures in progress, counters."""

    def __init__(self, name="Stand-in Orin", cc="8.7", total=8 << 30):
        self.info = DeviceInfo(index=0, name=name, compute_capability=cc, total_bytes=total, integrated=True)
        self.ranges: dict[int, tuple[int, np.ndarray]] = {}  # start -> (nbytes, owner array)
        self.capturing: dict[int, list] = {}  # stream handle -> recorded ops
        self.h2d_bytes = self.d2h_bytes = self.runs = self.launches = 0
        self.d2d_copies = 0  # d2d and d2d_2d calls run (a graph replay runs its copies again)
        self.allocated = 0

    def register(self, arr: np.ndarray) -> None:
        self.ranges[arr.ctypes.data] = (arr.nbytes, arr)

    def check(self, ptr: int, nbytes: int) -> None:
        for start, (n, _) in self.ranges.items():
            if start <= ptr and ptr + nbytes <= start + n:
                return
        raise AssertionError(f"stand-in: access of {nbytes} bytes at {ptr:#x} is outside every allocation")

    def pitched(self, ptr: int, pitch: int, width: int, height: int) -> np.ndarray:
        """[height, width] bytes at ptr, one row every pitch bytes, as a writable strided view."""
        if width == 0 or height == 0:
            return np.zeros((height, width), np.uint8)
        span = self.view(ptr, ((height - 1) * pitch + width,), np.uint8)  # [span] u8, bounds-checked
        return np.lib.stride_tricks.as_strided(span, (height, width), (pitch, 1))  # [height, width] u8

    def view(self, ptr: int, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes == 0:
            return np.zeros(shape, dtype)
        self.check(ptr, nbytes)
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr)).view(dtype).reshape(shape)

    def submit(self, handle: int, op) -> None:
        """Run now, or record if the stream is being captured."""
        if handle in self.capturing:
            self.capturing[handle].append(op)
        else:
            op()


class HostGraph:
    def __init__(self, dev: HostDevice, ops: list):
        self.dev, self.ops = dev, ops

    def launch(self, stream) -> None:
        self.dev.launches += 1
        for op in self.ops:
            op()

    def close(self) -> None:
        self.ops = []


class HostCuda:
    """runtime.cuda_mem.Cuda over host memory."""

    binding = "host stand-in"
    supports_graphs = True
    _handles = itertools.count(1)

    def __init__(self, dev: HostDevice):
        self.dev = dev
        self.mine: list[np.ndarray] = []
        self.closed = False
        self.threads_entered = 0  # enter_thread() calls: the camera loop's model thread must make one

    def device_info(self) -> DeviceInfo:
        return self.dev.info

    def mem_get_info(self) -> tuple[int, int]:
        return self.dev.info.total_bytes - self.dev.allocated, self.dev.info.total_bytes

    def malloc(self, nbytes: int):
        if nbytes > self.dev.info.total_bytes:
            raise CudaError(f"cudaMalloc failed: cudaErrorMemoryAllocation (out of memory) for {nbytes} bytes")
        raw = np.zeros(max(nbytes, 1) + 256, np.uint8)
        skip = -raw.ctypes.data % 256
        arr = raw[skip:skip + max(nbytes, 1)]  # 256-byte aligned, as cudaMalloc's
        self.dev.register(arr)
        self.dev.allocated += arr.nbytes
        self.mine.append(raw)
        return SimpleNamespace(ptr=arr.ctypes.data, nbytes=nbytes, free=lambda: None)

    def pinned(self, shape, dtype) -> np.ndarray:
        arr = np.zeros(shape, dtype)
        self.dev.register(arr)
        self.mine.append(arr)
        return arr

    def new_stream(self):
        return SimpleNamespace(handle=next(self._handles))

    def _copy(self, dst_ptr: int, src_ptr: int, n: int, stream, counter: str) -> None:
        def op():
            self.dev.check(src_ptr, n), self.dev.check(dst_ptr, n)
            ctypes.memmove(dst_ptr, src_ptr, n)
            setattr(self.dev, counter, getattr(self.dev, counter) + n)
        self.dev.submit(stream.handle, op)

    def h2d(self, dst_ptr: int, src: np.ndarray, stream) -> None:
        assert src.flags.c_contiguous
        self._copy(dst_ptr, src.ctypes.data, src.nbytes, stream, "h2d_bytes")

    def d2h(self, dst: np.ndarray, src_ptr: int, stream) -> None:
        assert dst.flags.c_contiguous
        self._copy(dst.ctypes.data, src_ptr, dst.nbytes, stream, "d2h_bytes")

    def d2d(self, dst_ptr: int, src_ptr: int, nbytes: int, stream) -> None:
        self.d2d_2d(dst_ptr, nbytes, src_ptr, nbytes, nbytes, 1, stream)  # one piece

    def d2d_2d(self, dst_ptr: int, dst_pitch: int, src_ptr: int, src_pitch: int, width_bytes: int, height: int,
               stream) -> None:
        assert width_bytes >= 0 and height >= 0 and min(dst_pitch, src_pitch) >= width_bytes, \
            "stand-in: a 2-D copy's pitches must be at least its width (cudaErrorInvalidPitchValue)"

        def op():
            dst = self.dev.pitched(dst_ptr, dst_pitch, width_bytes, height)  # [height, width] u8
            src = self.dev.pitched(src_ptr, src_pitch, width_bytes, height)  # [height, width] u8
            assert not np.may_share_memory(dst, src), "stand-in: the copy's source and destination overlap"
            dst[...] = src
            self.dev.d2d_copies += 1
        self.dev.submit(stream.handle, op)

    def memset(self, dst_ptr: int, value: int, nbytes: int, stream) -> None:
        def op():
            self.dev.check(dst_ptr, nbytes)
            ctypes.memset(dst_ptr, value, nbytes)
        self.dev.submit(stream.handle, op)

    def enter_thread(self) -> None:
        self.threads_entered += 1

    def leave_thread(self) -> None:
        pass

    def synchronize(self, stream) -> None:
        assert stream.handle not in self.dev.capturing, "synchronize during a capture is an error in CUDA"

    def begin_capture(self, stream) -> None:
        self.dev.capturing[stream.handle] = []

    def end_capture(self, stream) -> HostGraph:
        return HostGraph(self.dev, self.dev.capturing.pop(stream.handle))

    def close(self) -> None:
        self.closed = True


# ----------------------------------------------------------------------------- TensorRT over ONNX Runtime


class DataType(enum.Enum):
    FLOAT = np.float32
    HALF = np.float16
    INT64 = np.int64
    INT32 = np.int32


_ORT_TYPES = {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF, "tensor(int64)": DataType.INT64,
              "tensor(int32)": DataType.INT32}


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class Logger:
    ERROR, WARNING, INFO, VERBOSE = 1, 2, 3, 4

    def __init__(self, severity=2):
        self.severity = severity


def _plan_bytes(model: bytes, profiles: list) -> bytes:
    head = json.dumps({"profiles": profiles}).encode()
    return PLAN_MAGIC + len(head).to_bytes(8, "little") + head + model


class FakeEngine:
    def __init__(self, data: bytes, fake: "FakeTrt"):
        body = data[len(PLAN_MAGIC):]
        n = int.from_bytes(body[:8], "little")
        self.profiles = json.loads(body[8:8 + n])["profiles"]  # [profile][tensor] -> (min, opt, max)
        self.fake = fake
        self.session = ort.InferenceSession(body[8 + n:], providers=["CPUExecutionProvider"])
        self.io = {}
        for kind, args in ((TensorIOMode.INPUT, self.session.get_inputs()), (TensorIOMode.OUTPUT,
                                                                              self.session.get_outputs())):
            for a in args:
                self.io[a.name] = (kind, _ORT_TYPES[a.type], [d if isinstance(d, int) else -1 for d in a.shape])
        # TensorRT's own order need not be the ONNX's: list outputs first to prove binding is by name
        self.names = [n for n in self.io if self.io[n][0] == TensorIOMode.OUTPUT] + \
                     [n for n in self.io if self.io[n][0] == TensorIOMode.INPUT]
        self.device_memory_size_v2 = 1 << 16

    num_io_tensors = property(lambda self: len(self.names))
    num_optimization_profiles = property(lambda self: len(self.profiles))

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.io[name][0]

    def get_tensor_dtype(self, name):
        return self.io[name][1]

    def get_tensor_shape(self, name):
        return self.io[name][2]

    def get_tensor_profile_shape(self, name, index):
        return [tuple(s) for s in self.profiles[index][name]]

    def create_execution_context(self, strategy):
        return FakeContext(self, strategy)


class FakeContext:
    def __init__(self, engine: FakeEngine, strategy):
        self.engine, self.strategy = engine, strategy
        self.memory = None
        self.profile = 0  # TensorRT selects profile 0 by default
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.generation = 0  # bumped by every change: a graph captured before a change is invalid after it

    def set_device_memory(self, ptr, nbytes):
        assert nbytes >= self.engine.device_memory_size_v2
        self.engine.fake.dev.check(ptr, nbytes)
        self.memory = ptr

    def set_optimization_profile_async(self, index, stream_handle):
        if not 0 <= index < len(self.engine.profiles):
            raise RuntimeError("Error in set optimization profile async.")  # what the real binding does
        self.profile = index
        self.shapes = {}  # switching profile resets the input shapes
        self.generation += 1
        return True

    def set_input_shape(self, name, shape):
        if self.engine.io.get(name, (None,))[0] != TensorIOMode.INPUT:
            return False
        lo, _, hi = self.engine.profiles[self.profile][name]
        if len(shape) != len(lo) or any(not a <= d <= b for a, d, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = tuple(int(d) for d in shape)
        self.generation += 1
        return True

    def set_tensor_address(self, name, ptr):
        if name not in self.engine.io:
            return False
        self.addresses[name] = int(ptr)
        self.generation += 1
        return True

    def execute_async_v3(self, stream_handle):
        e = self.engine
        inputs = [n for n in e.io if e.io[n][0] == TensorIOMode.INPUT]
        if (self.strategy == ExecutionContextAllocationStrategy.USER_MANAGED and self.memory is None) or \
                self.profile is None or any(n not in self.shapes for n in inputs) or \
                any(n not in self.addresses for n in e.io):
            return False
        addresses = list(self.addresses.values())
        assert all(a and a % 256 == 0 for a in addresses), "stand-in: addresses must be non-null, 256-byte aligned"
        assert len(set(addresses)) == len(addresses), "stand-in: two I/O tensors share an address"
        shapes, bound, generation = dict(self.shapes), dict(self.addresses), self.generation

        def op():  # what a CUDA graph bakes in: these shapes and addresses, valid while the context is unchanged
            assert self.generation == generation, "stand-in: graph replayed after its context was re-bound"
            self._run(shapes, bound)
        e.fake.dev.submit(stream_handle, op)
        return True

    def _run(self, shapes, addresses):
        e, dev = self.engine, self.engine.fake.dev
        feeds = {n: dev.view(addresses[n], shapes[n], e.io[n][1].value).copy() for n in shapes}
        names = [o.name for o in e.session.get_outputs()]
        for name, value in zip(names, e.session.run(names, feeds)):
            dev.view(addresses[name], value.shape, e.io[name][1].value)[...] = value
        dev.runs += 1


class ExecutionContextAllocationStrategy(enum.Enum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class FakeRuntime:
    def __init__(self, fake: "FakeTrt", logger):
        self.fake = fake

    def deserialize_cuda_engine(self, data: bytes):
        return FakeEngine(data, self.fake) if data.startswith(PLAN_MAGIC) else None


# ----------------------------------------------------------------------------- builder


class FakeNetwork:
    def __init__(self, flags):
        self.flags = flags
        self.model: bytes | None = None
        self.inputs: dict[str, list] = {}


class FakeParser:
    def __init__(self, network: FakeNetwork, logger):
        self.network = network
        self.errors: list[str] = []

    def parse_from_file(self, path):
        try:
            model = onnx.load(path)
        except Exception as e:  # the real parser reports, not raises
            self.errors.append(f"cannot read {path}: {e}")
            return False
        self.network.model = model.SerializeToString()
        init = {i.name for i in model.graph.initializer}
        self.network.inputs = {i.name: [d.dim_value if d.HasField("dim_value") else -1
                                        for d in i.type.tensor_type.shape.dim]
                               for i in model.graph.input if i.name not in init}
        return True

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]


class FakeProfile:
    def __init__(self):
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name, lo, opt, hi):
        if not len(lo) == len(opt) == len(hi) or any(not 0 <= a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class FakeTimingCache:
    def __init__(self, data: bytes):
        self.data = data or b"STANDIN-TIMING-CACHE"

    def serialize(self):
        return self.data


class FakeConfig:
    def __init__(self):
        self.profiles: list[FakeProfile] = []
        self.cleared: set = set()
        self.pool: dict = {}
        self.builder_optimization_level = 3
        self.max_aux_streams = -1
        self.cache = None

    def set_memory_pool_limit(self, pool, nbytes):
        self.pool[pool] = nbytes

    def clear_flag(self, flag):
        self.cleared.add(flag)

    def create_timing_cache(self, data):
        return FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1


class FakeBuilder:
    def __init__(self, fake: "FakeTrt", logger):
        self.fake = fake
        self.max_threads = 8

    def create_network(self, flags):
        return FakeNetwork(flags)

    def create_builder_config(self):
        return FakeConfig()

    def create_optimization_profile(self):
        return FakeProfile()

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig):
        if self.fake.__version__.startswith("10.") and not network.flags & (1 << 1):
            raise AssertionError("stand-in: TensorRT 10 networks must be created STRONGLY_TYPED")
        profiles = []
        for p in config.profiles:
            if set(p.shapes) != set(network.inputs):
                raise AssertionError(f"stand-in: profile covers {sorted(p.shapes)}, inputs are "
                                     f"{sorted(network.inputs)}")
            for name, (lo, opt, hi) in p.shapes.items():
                fixed = network.inputs[name]
                if len(lo) != len(fixed) or any(f != -1 and not lo[k] == opt[k] == hi[k] == f
                                                for k, f in enumerate(fixed)):
                    raise AssertionError(f"stand-in: profile of '{name}' {lo}..{hi} contradicts the graph {fixed}")
            profiles.append({n: [list(s) for s in v] for n, v in p.shapes.items()})
        self.fake.builds.append(SimpleNamespace(config=config, network=network))
        return _plan_bytes(network.model, profiles)


class FakeTrt:
    """The `tensorrt` module, as far as the project uses it."""

    Logger = Logger
    TensorIOMode = TensorIOMode
    DataType = DataType
    ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy
    NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
    BuilderFlag = SimpleNamespace(TF32="TF32")
    MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")

    def __init__(self, dev: HostDevice, version: str = "10.3.0"):
        self.dev = dev
        self.__version__ = version
        self.builds: list = []

    def nptype(self, dtype: DataType):
        return dtype.value

    def Runtime(self, logger):  # noqa: N802 (TensorRT's spelling)
        return FakeRuntime(self, logger)

    def Builder(self, logger):  # noqa: N802
        return FakeBuilder(self, logger)

    def OnnxParser(self, network, logger):  # noqa: N802
        return FakeParser(network, logger)


def install(monkeypatch, version: str = "10.3.0", **device) -> tuple[FakeTrt, HostDevice]:
    """Put the stand-ins where the code looks: sys.modules['tensorrt'] and runtime.cuda_mem."""
    import sys

    from runtime import cuda_mem

    dev = HostDevice(**device)
    fake = FakeTrt(dev, version)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(cuda_mem, "open_cuda", lambda device=0: HostCuda(dev))
    monkeypatch.setattr(cuda_mem, "probe_cuda", lambda: (True, f"{dev.info.name} via the host stand-in"))
    return fake, dev

