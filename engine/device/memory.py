"""Owners of device memory and page-locked host memory, and the copies between them.

Every copy is asynchronous on a `Stream`; the caller synchronizes the stream (or records an
`Event`) before it reads a host destination or frees a source. Host arrays must be C-contiguous.
Pointers are plain ints (`buffer.ptr + offset` addresses a sub-range).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from engine.device.cuda import CudaError, Stream, bindings, cuda_call


def _host_ptr(array: np.ndarray) -> int:
    if not array.flags.c_contiguous:
        raise ValueError("host array must be C-contiguous for a device copy")
    return int(array.ctypes.data)


class DeviceBuffer:
    """`nbytes` of device memory (cuMemAlloc), freed by close()."""

    def __init__(self, nbytes: int) -> None:
        if nbytes <= 0:
            raise ValueError(f"DeviceBuffer size must be positive, got {nbytes}")
        driver, _, _ = bindings()
        self._driver = driver
        self.nbytes = int(nbytes)
        self._dptr: Any = cuda_call(driver.cuMemAlloc, self.nbytes)

    @property
    def ptr(self) -> int:
        if self._dptr is None:
            raise CudaError("DeviceBuffer already closed")
        return int(self._dptr)

    def _check_range(self, offset: int, nbytes: int) -> None:
        if offset < 0 or nbytes < 0 or offset + nbytes > self.nbytes:
            raise ValueError(
                f"range [{offset}, {offset + nbytes}) outside buffer of {self.nbytes} bytes")

    def copy_from_host(self, src: np.ndarray, stream: Stream) -> None:
        """Host array -> the start of this buffer."""
        self._check_range(0, src.nbytes)
        cuda_call(self._driver.cuMemcpyHtoDAsync, self.ptr, _host_ptr(src), src.nbytes,
                  stream.handle)

    def copy_to_host(self, dst: np.ndarray, stream: Stream, offset: int = 0) -> None:
        """This buffer at `offset` -> host array (its full size). Synchronize before reading."""
        self._check_range(offset, dst.nbytes)
        cuda_call(self._driver.cuMemcpyDtoHAsync, _host_ptr(dst), self.ptr + offset, dst.nbytes,
                  stream.handle)

    def memset(self, value: int, stream: Stream, nbytes: int | None = None,
               offset: int = 0) -> None:
        """Set `nbytes` (default: all from offset) bytes to `value` (0..255)."""
        count = self.nbytes - offset if nbytes is None else nbytes
        self._check_range(offset, count)
        cuda_call(self._driver.cuMemsetD8Async, self.ptr + offset, value & 0xFF, count,
                  stream.handle)

    def close(self) -> None:
        if self._dptr is None:
            return
        cuda_call(self._driver.cuMemFree, self._dptr)
        self._dptr = None

    def __enter__(self) -> DeviceBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def copy_device_to_device(dst_ptr: int, src_ptr: int, nbytes: int, stream: Stream) -> None:
    """Device -> device copy of `nbytes` between raw pointers (e.g. `buffer.ptr + offset`)."""
    driver, _, _ = bindings()
    cuda_call(driver.cuMemcpyDtoDAsync, dst_ptr, src_ptr, nbytes, stream.handle)


class PinnedBuffer:
    """Page-locked host memory (cuMemHostAlloc) with numpy views; fast async copies.

    Views returned by `array()` alias the buffer: do not use them after close().
    """

    def __init__(self, nbytes: int) -> None:
        if nbytes <= 0:
            raise ValueError(f"PinnedBuffer size must be positive, got {nbytes}")
        driver, _, _ = bindings()
        self._driver = driver
        self.nbytes = int(nbytes)
        self._hptr: int | None = int(cuda_call(driver.cuMemHostAlloc, self.nbytes, 0))

    @property
    def ptr(self) -> int:
        if self._hptr is None:
            raise CudaError("PinnedBuffer already closed")
        return self._hptr

    def array(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """A numpy view of the first prod(shape) elements."""
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dt.itemsize > self.nbytes:
            raise ValueError(f"view {shape} {dt} needs {count * dt.itemsize} bytes, "
                             f"buffer has {self.nbytes}")
        raw = (ctypes.c_byte * (count * dt.itemsize)).from_address(self.ptr)
        return np.frombuffer(raw, dtype=dt, count=count).reshape(shape)

    def close(self) -> None:
        if self._hptr is None:
            return
        cuda_call(self._driver.cuMemFreeHost, self._hptr)
        self._hptr = None

    def __enter__(self) -> PinnedBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StagingArea:
    """A device buffer with a pinned twin, for small per-step inputs (ids, tables, slots).

    `upload` packs host arrays back to back (aligned to 256 bytes) into the pinned buffer and
    copies them in ONE H2D copy; returns each array's device pointer.
    """

    ALIGN = 256

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.pinned = PinnedBuffer(self.nbytes)
        try:
            self.device = DeviceBuffer(self.nbytes)
        except BaseException:
            self.pinned.close()
            raise

    def upload(self, arrays: list[np.ndarray], stream: Stream) -> list[int]:
        offsets, end = [], 0
        for arr in arrays:
            offsets.append(end)
            end += -(-arr.nbytes // self.ALIGN) * self.ALIGN
        if end > self.nbytes:
            raise ValueError(f"staging needs {end} bytes, has {self.nbytes}")
        host = self.pinned.array((self.nbytes,), np.uint8)
        for arr, off in zip(arrays, offsets, strict=True):
            host[off:off + arr.nbytes] = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
        if end:
            self.device.copy_from_host(host[:end], stream)
        return [self.device.ptr + off for off in offsets]

    def close(self) -> None:
        self.device.close()
        self.pinned.close()

    def __enter__(self) -> StagingArea:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
