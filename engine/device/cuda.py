"""cuda-python in one place: the error-checking helper and the context, stream and event owners.

Every CUDA driver / runtime / NVRTC call in trtserve goes through `cuda_call` (after NVIDIA's
`cuda_call` in TensorRT samples/python/common_runtime.py): it checks the status code that
cuda-python returns first and raises a `CudaError` naming the call. Owners release their handle in
an explicit `close()` (also on `with` exit), never in `__del__`.

Works with cuda-bindings 12.6+/13.x (`cuda.bindings.*`) and older cuda-python (`cuda.cuda`).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)


class CudaError(RuntimeError):
    """A CUDA call returned an error status (or CUDA could not be loaded at all)."""


def _import_bindings() -> tuple[ModuleType, ModuleType, ModuleType]:
    """(driver, runtime, nvrtc) modules, new layout first."""
    try:
        from cuda.bindings import driver, nvrtc, runtime
    except ImportError:
        driver = importlib.import_module("cuda.cuda")
        runtime = importlib.import_module("cuda.cudart")
        nvrtc = importlib.import_module("cuda.nvrtc")
    return driver, runtime, nvrtc


def bindings() -> tuple[ModuleType, ModuleType, ModuleType]:
    """(driver, runtime, nvrtc); raises CudaError when cuda-python is not installed."""
    try:
        return _import_bindings()
    except ImportError as exc:
        raise CudaError(f"cuda-python is not installed ({exc}); "
                        "pip install -e '.[gpu]' in the trtserve checkout") from exc


def _status_text(status: Any) -> str:
    """'NAME (code): description' for a CUresult / cudaError_t / nvrtcResult, without a driver."""
    name = getattr(status, "name", None) or type(status).__name__
    code = int(status)
    detail = ""
    try:
        driver, runtime, nvrtc = _import_bindings()
        if isinstance(status, driver.CUresult):
            err, text = driver.cuGetErrorString(status)
            detail = text.decode() if int(err) == 0 and text else ""
        elif isinstance(status, runtime.cudaError_t):
            err, text = runtime.cudaGetErrorString(status)
            detail = text.decode() if int(err) == 0 and text else ""
        elif isinstance(status, nvrtc.nvrtcResult):
            err, text = nvrtc.nvrtcGetErrorString(status)
            detail = text.decode() if int(err) == 0 and text else ""
    except Exception:  # the description is a nicety: the driver/NVRTC library may be absent
        detail = ""
    return f"{name} ({code})" + (f": {detail}" if detail else "")


def check_status(status: Any, call: str) -> None:
    """Raise CudaError naming `call` when `status` is not success (0)."""
    if int(status) != 0:
        raise CudaError(f"{call} failed: {_status_text(status)}")


def cuda_call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a cuda-python function, check its status, return its value(s).

    cuda-python returns `(status, *values)`; this returns None, the single value, or the tuple.
    Loading failures (no driver, no NVRTC library) also surface as CudaError naming the call.
    """
    name = getattr(fn, "__name__", repr(fn))
    try:
        result = fn(*args)
    except CudaError:
        raise
    except Exception as exc:  # e.g. cuda.pathfinder's DynamicLibNotFoundError: no driver here
        raise CudaError(f"{name} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(result, tuple):
        result = (result,)
    check_status(result[0], name)
    values = result[1:]
    if not values:
        return None
    return values[0] if len(values) == 1 else values


_init_lock = threading.Lock()


class CudaContext:
    """The primary context of one device, retained for the owner's lifetime.

    The primary context is the one the CUDA runtime (TensorRT, onnxruntime) uses too, so all share
    memory and streams. Call `make_current()` on every thread that issues driver calls.
    """

    def __init__(self, ordinal: int = 0) -> None:
        driver, _, _ = bindings()
        self._driver = driver
        with _init_lock:
            cuda_call(driver.cuInit, 0)
        self.ordinal = ordinal
        self.device = cuda_call(driver.cuDeviceGet, ordinal)
        self._ctx: Any = cuda_call(driver.cuDevicePrimaryCtxRetain, self.device)
        self.make_current()
        logger.info("CUDA device %d: %s, compute capability %d.%d", ordinal, self.name,
                    *self.compute_capability)

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def make_current(self) -> None:
        if self._ctx is None:
            raise CudaError("CUDA context already closed")
        cuda_call(self._driver.cuCtxSetCurrent, self._ctx)

    def _attribute(self, attr_name: str) -> int:
        attr = getattr(self._driver.CUdevice_attribute, attr_name)
        return int(cuda_call(self._driver.cuDeviceGetAttribute, attr, self.device))

    @property
    def compute_capability(self) -> tuple[int, int]:
        return (self._attribute("CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR"),
                self._attribute("CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR"))

    @property
    def name(self) -> str:
        raw = cuda_call(self._driver.cuDeviceGetName, 256, self.device)
        return bytes(raw).split(b"\0", 1)[0].decode(errors="replace")

    def mem_info(self) -> tuple[int, int]:
        """(free, total) device memory in bytes."""
        free, total = cuda_call(self._driver.cuMemGetInfo)
        return int(free), int(total)

    def synchronize(self) -> None:
        self.make_current()
        cuda_call(self._driver.cuCtxSynchronize)

    def close(self) -> None:
        if self._ctx is None:
            return
        cuda_call(self._driver.cuDevicePrimaryCtxRelease, self.device)
        self._ctx = None

    def __enter__(self) -> CudaContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Stream:
    """A non-blocking CUDA stream. `handle` is the CUstream; `int(stream)` its address."""

    def __init__(self) -> None:
        driver, _, _ = bindings()
        self._driver = driver
        flags = driver.CUstream_flags.CU_STREAM_NON_BLOCKING
        self.handle: Any = cuda_call(driver.cuStreamCreate, int(flags))

    def __int__(self) -> int:
        if self.handle is None:
            raise CudaError("stream already closed")
        return int(self.handle)

    def synchronize(self) -> None:
        cuda_call(self._driver.cuStreamSynchronize, self.handle)

    def close(self) -> None:
        if self.handle is None:
            return
        cuda_call(self._driver.cuStreamDestroy, self.handle)
        self.handle = None

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CapturedGraph:
    """The work `work()` puts on `stream`, captured once as a CUDA graph (nothing runs while it
    is captured); `launch` replays it on a stream."""

    def __init__(self, stream: Stream, work: Callable[[], None]) -> None:
        driver, _, _ = bindings()
        self._driver = driver
        mode = driver.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        cuda_call(driver.cuStreamBeginCapture, stream.handle, mode)
        try:
            work()
        finally:
            self._graph: Any = cuda_call(driver.cuStreamEndCapture, stream.handle)
        try:
            self._exec: Any = cuda_call(driver.cuGraphInstantiate, self._graph, 0)
        except CudaError:
            cuda_call(driver.cuGraphDestroy, self._graph)
            raise

    def launch(self, stream: Stream) -> None:
        if self._exec is None:
            raise CudaError("captured graph already closed")
        cuda_call(self._driver.cuGraphLaunch, self._exec, stream.handle)

    def close(self) -> None:
        if self._exec is None:
            return
        cuda_call(self._driver.cuGraphExecDestroy, self._exec)
        cuda_call(self._driver.cuGraphDestroy, self._graph)
        self._exec = self._graph = None


class Event:
    """A CUDA event with timing enabled, for ordering and for measuring device time."""

    def __init__(self) -> None:
        driver, _, _ = bindings()
        self._driver = driver
        self.handle: Any = cuda_call(driver.cuEventCreate, 0)

    def record(self, stream: Stream) -> None:
        cuda_call(self._driver.cuEventRecord, self.handle, stream.handle)

    def synchronize(self) -> None:
        cuda_call(self._driver.cuEventSynchronize, self.handle)

    def elapsed_ms_since(self, start: Event) -> float:
        """Milliseconds between `start` and this event (both recorded and completed)."""
        return float(cuda_call(self._driver.cuEventElapsedTime, start.handle, self.handle))

    def close(self) -> None:
        if self.handle is None:
            return
        cuda_call(self._driver.cuEventDestroy, self.handle)
        self.handle = None

    def __enter__(self) -> Event:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def device_compute_capability(ordinal: int = 0) -> tuple[int, int]:
    """(major, minor) of one device, read through the driver without creating a context."""
    driver, _, _ = bindings()
    cuda_call(driver.cuInit, 0)
    device = cuda_call(driver.cuDeviceGet, ordinal)
    attrs = driver.CUdevice_attribute
    major, minor = (int(cuda_call(driver.cuDeviceGetAttribute, getattr(attrs, name), device))
                    for name in ("CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR",
                                 "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR"))
    return major, minor


def gpu_available() -> str | None:
    """None when a CUDA device can be used here, else the reason it cannot (for skips/logs)."""
    try:
        driver, _, _ = bindings()
        cuda_call(driver.cuInit, 0)
        count = int(cuda_call(driver.cuDeviceGetCount))
    except CudaError as exc:
        return str(exc)
    return None if count > 0 else "no CUDA device found"
