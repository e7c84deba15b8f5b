"""The device layer's pure parts, checked on CPU (no GPU, no driver needed): kernel source,
launch geometry, argument packing, the error helper's messages."""

from __future__ import annotations

import ctypes
import re
from typing import Any

import numpy as np
import pytest

from engine.device import kernels
from engine.device.cuda import CudaError, check_status, cuda_call


@pytest.mark.parametrize("dtype,ctype", [("float16", "unsigned short"),
                                         ("bfloat16", "unsigned short"),
                                         ("float32", "float")])
def test_kernel_source_names_and_storage_type(dtype: str, ctype: str) -> None:
    """Each dtype gets both entry points, extern "C", over the right storage type."""
    src = kernels.kernel_source(dtype)
    scatter, copy = kernels.kernel_names(dtype)
    assert f'extern "C" __global__ void {scatter}(' in src
    assert f'extern "C" __global__ void {copy}(' in src
    assert f"typedef {ctype} elem_t;" in src
    assert src.count("{") == src.count("}")  # the template's braces were all escaped/closed


def test_kernel_source_rejects_unknown_dtype() -> None:
    """An unsupported KV dtype is a clear ValueError, not a bad compile on the GPU."""
    with pytest.raises(ValueError, match="int8"):
        kernels.kernel_source("int8")


def test_scatter_signature_matches_packed_arg_count() -> None:
    """The scatter kernel takes 15 parameters (3 ptr, 5 i32, 7 i64), block copy 7."""
    src = kernels.kernel_source("float16")
    body = src.split("kv_scatter_f16(")[1].split(")")[0]
    assert len([p for p in body.split(",") if p.strip()]) == 15
    body = src.split("kv_block_copy_f16(")[1].split(")")[0]
    assert len([p for p in body.split(",") if p.strip()]) == 7


def test_grid_size_bounds() -> None:
    """At least one block, ceil(total / threads) when small, capped for grid-stride loops."""
    assert kernels.grid_size(0) == 1
    assert kernels.grid_size(1) == 1
    assert kernels.grid_size(kernels.THREADS_PER_BLOCK + 1) == 2
    assert kernels.grid_size(10**12) == kernels.MAX_GRID_BLOCKS


def test_pack_args_points_at_typed_values() -> None:
    """Each pointer in the packed array addresses a value of the declared C type."""
    packed = kernels.pack_args([("ptr", 0xDEADBEEF00), ("i32", -7), ("i64", 1 << 40)])
    assert packed.pointers.dtype == np.uint64 and packed.pointers.shape == (3,)
    ptrs = [int(p) for p in packed.pointers]
    assert ctypes.c_uint64.from_address(ptrs[0]).value == 0xDEADBEEF00
    assert ctypes.c_int32.from_address(ptrs[1]).value == -7
    assert ctypes.c_int64.from_address(ptrs[2]).value == 1 << 40
    assert packed.address == packed.pointers.ctypes.data


def test_pack_args_range_checked() -> None:
    """A value that does not fit its C type is refused before any launch."""
    with pytest.raises(ValueError, match="does not fit i32"):
        kernels.pack_args([("i32", 1 << 31)])
    with pytest.raises(ValueError, match="unknown kernel argument"):
        kernels.pack_args([("f32", 1)])


def _driver() -> Any:
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver
        except ImportError:
            pytest.skip("cuda-python is not installed")
    return driver


def test_check_status_message_names_call_and_error() -> None:
    """A failing CUresult raises CudaError naming the call, the error name and its code."""
    driver = _driver()
    err = driver.CUresult.CUDA_ERROR_OUT_OF_MEMORY
    with pytest.raises(CudaError, match=r"^cuMemAlloc failed: CUDA_ERROR_OUT_OF_MEMORY \(2\)"):
        check_status(err, "cuMemAlloc")
    check_status(driver.CUresult.CUDA_SUCCESS, "cuMemAlloc")  # success: no raise


def test_cuda_call_unpacks_values_and_raises_on_fake_error() -> None:
    """cuda_call returns the single value / tuple after the status, and raises on a bad status."""
    driver = _driver()
    ok = driver.CUresult.CUDA_SUCCESS

    def cuFake(*args: int) -> tuple[Any, ...]:  # noqa: N802 - named like a driver call
        return (ok, *args)

    assert cuda_call(cuFake) is None
    assert cuda_call(cuFake, 5) == 5
    assert cuda_call(cuFake, 1, 2) == (1, 2)

    def cuBroken() -> tuple[Any, int]:  # noqa: N802
        return (driver.CUresult.CUDA_ERROR_INVALID_VALUE, 0)

    want = re.escape("cuBroken failed: CUDA_ERROR_INVALID_VALUE (1)")
    with pytest.raises(CudaError, match=want):
        cuda_call(cuBroken)


def test_cuda_call_wraps_loader_failures() -> None:
    """A library that cannot load (no driver here) becomes a CudaError naming the call."""

    def cuInit(flags: int) -> tuple[int]:  # noqa: N802
        raise OSError("libcuda.so.1: cannot open shared object file")

    with pytest.raises(CudaError, match="cuInit failed: OSError: libcuda"):
        cuda_call(cuInit, 0)
