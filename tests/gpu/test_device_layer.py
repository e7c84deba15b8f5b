"""cuda-python device layer on a real GPU: the checking helper, buffers, streams, events."""

from __future__ import annotations

import numpy as np
import pytest

from engine.device.cuda import (
    CudaContext,
    CudaError,
    Event,
    Stream,
    bindings,
    cuda_call,
    device_compute_capability,
)
from engine.device.memory import DeviceBuffer, PinnedBuffer, StagingArea, copy_device_to_device

pytestmark = pytest.mark.gpu


def test_checking_helper_raises_on_a_bad_call(cuda_ctx: CudaContext) -> None:
    """An impossible allocation raises CudaError naming the call and the CUDA error."""
    driver, _, _ = bindings()
    with pytest.raises(CudaError, match=r"cuMemAlloc failed: CUDA_ERROR_OUT_OF_MEMORY \(2\)"):
        cuda_call(driver.cuMemAlloc, 1 << 60)
    with pytest.raises(CudaError, match="cuDeviceGet failed: CUDA_ERROR_INVALID_DEVICE"):
        cuda_call(driver.cuDeviceGet, 10_000)


def test_context_reports_the_device(cuda_ctx: CudaContext) -> None:
    """Name, compute capability and memory info come back sane."""
    major, minor = cuda_ctx.compute_capability
    assert major >= 5 and minor >= 0
    assert device_compute_capability(cuda_ctx.ordinal) == (major, minor)  # backend choice's
    assert cuda_ctx.name
    free, total = cuda_ctx.mem_info()
    assert 0 < free <= total


def test_device_buffer_round_trip(stream: Stream) -> None:
    """Host -> device -> device (offset) -> pinned host gives the same bytes; memset works."""
    data = np.random.default_rng(0).integers(0, 255, size=1 << 20, dtype=np.uint8)
    with DeviceBuffer(data.nbytes) as a, DeviceBuffer(2 * data.nbytes) as b, \
            PinnedBuffer(data.nbytes) as pinned:
        a.copy_from_host(data, stream)
        copy_device_to_device(b.ptr + data.nbytes, a.ptr, data.nbytes, stream)
        out = pinned.array((data.nbytes,), np.uint8)
        b.copy_to_host(out, stream, offset=data.nbytes)
        stream.synchronize()
        np.testing.assert_array_equal(out, data)
        b.memset(7, stream, nbytes=16, offset=data.nbytes + 8)
        page = np.empty(32, np.uint8)
        b.copy_to_host(page, stream, offset=data.nbytes)
        stream.synchronize()
        np.testing.assert_array_equal(page[8:24], 7)
        np.testing.assert_array_equal(page[:8], data[:8])
        with pytest.raises(ValueError, match="outside buffer"):
            a.copy_to_host(np.empty(data.nbytes + 1, np.uint8), stream)


def test_staging_area_packs_aligned(stream: Stream) -> None:
    """Several arrays go up in one copy, each at a 256-byte aligned device address."""
    arrays = [np.arange(n, dtype=np.int64) * (n + 1) for n in (3, 100, 1)]
    with StagingArea(1 << 16) as staging, DeviceBuffer(1 << 16) as _:
        ptrs = staging.upload(arrays, stream)
        assert all(p % StagingArea.ALIGN == 0 for p in ptrs)
        for arr, ptr in zip(arrays, ptrs, strict=True):
            back = np.empty_like(arr)
            staging.device.copy_to_host(back, stream, offset=ptr - staging.device.ptr)
            stream.synchronize()
            np.testing.assert_array_equal(back, arr)


def test_event_timing_and_idempotent_close(stream: Stream) -> None:
    """Events time device work; closing owners twice is harmless; use after close raises."""
    with Event() as start, Event() as end, DeviceBuffer(64 << 20) as buf:
        start.record(stream)
        buf.memset(1, stream)
        end.record(stream)
        end.synchronize()
        assert end.elapsed_ms_since(start) >= 0.0
    buf.close()
    with pytest.raises(CudaError, match="closed"):
        _ = buf.ptr
