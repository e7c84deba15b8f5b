"""The two KV-pool kernels, compiled at run time by NVRTC and launched through cuda-python.

- `kv_scatter`: new K/V of this step's tokens -> pool slots given by a slot mapping
  (slot = block * block_size + offset; slot < 0 = padding, skipped).
- `kv_block_copy`: whole blocks src -> dst in every plane (copy-on-write of shared blocks).

A *plane* is one (layer, K-or-V) slab of the pool: `[num_blocks, ...block...]`. Strides are in
elements, so both `[block, slot, head, dim]` and `[block, head, slot, dim]` block layouts work.
The kernels only move bits, so fp16 and bf16 share a 16-bit storage type (no NVRTC headers).
Source generation, launch geometry and argument packing are pure Python (tested on CPU).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.device.cuda import CudaContext, CudaError, Stream, bindings, cuda_call

logger = logging.getLogger(__name__)

# dtype name -> (C storage type, bytes per element)
STORAGE_TYPES: dict[str, tuple[str, int]] = {
    "float16": ("unsigned short", 2),
    "bfloat16": ("unsigned short", 2),
    "float32": ("float", 4),
}
THREADS_PER_BLOCK = 256
MAX_GRID_BLOCKS = 1 << 16  # grid-stride loops cover the rest

_TEMPLATE = r"""
typedef {ctype} elem_t;

extern "C" __global__ void kv_scatter_{suffix}(
    elem_t* __restrict__ pool, const elem_t* __restrict__ src,
    const long long* __restrict__ slots,
    int num_planes, int num_tokens, int num_heads, int head_dim, int block_size,
    long long src_plane_stride, long long src_token_stride, long long src_head_stride,
    long long dst_plane_stride, long long dst_block_stride, long long dst_slot_stride,
    long long dst_head_stride)
{{
    const long long total = (long long)num_planes * num_tokens * num_heads * head_dim;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {{
        // i = ((plane * num_tokens + token) * num_heads + head) * head_dim + d
        const int d = (int)(i % head_dim);
        const int head = (int)((i / head_dim) % num_heads);
        const int token = (int)((i / ((long long)head_dim * num_heads)) % num_tokens);
        const int plane = (int)(i / ((long long)head_dim * num_heads * num_tokens));
        const long long slot = slots[token];
        if (slot < 0) continue;
        const long long block = slot / block_size;
        const long long offset = slot % block_size;
        pool[plane * dst_plane_stride + block * dst_block_stride + offset * dst_slot_stride
             + head * dst_head_stride + d]
            = src[plane * src_plane_stride + token * src_token_stride
                  + head * src_head_stride + d];
    }}
}}

extern "C" __global__ void kv_block_copy_{suffix}(
    elem_t* __restrict__ pool, const long long* __restrict__ pairs, int num_pairs,
    int num_planes, long long block_elems, long long plane_stride, long long block_stride)
{{
    const long long total = (long long)num_pairs * num_planes * block_elems;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {{
        // i = (pair * num_planes + plane) * block_elems + e
        const long long e = i % block_elems;
        const long long plane = (i / block_elems) % num_planes;
        const long long pair = i / (block_elems * num_planes);
        const long long src_block = pairs[2 * pair];
        const long long dst_block = pairs[2 * pair + 1];
        pool[plane * plane_stride + dst_block * block_stride + e]
            = pool[plane * plane_stride + src_block * block_stride + e];
    }}
}}
"""


def kernel_suffix(dtype: str) -> str:
    if dtype not in STORAGE_TYPES:
        raise ValueError(f"no KV kernels for dtype {dtype!r}; have {sorted(STORAGE_TYPES)}")
    return {"float16": "f16", "bfloat16": "bf16", "float32": "f32"}[dtype]


def kernel_source(dtype: str) -> str:
    """CUDA C source of both kernels for one KV dtype."""
    suffix = kernel_suffix(dtype)
    return _TEMPLATE.format(ctype=STORAGE_TYPES[dtype][0], suffix=suffix)


def kernel_names(dtype: str) -> tuple[str, str]:
    """(scatter, block copy) entry points of `kernel_source(dtype)`."""
    suffix = kernel_suffix(dtype)
    return f"kv_scatter_{suffix}", f"kv_block_copy_{suffix}"


def grid_size(total_elements: int) -> int:
    """Blocks of THREADS_PER_BLOCK threads for a grid-stride loop over `total_elements`."""
    return max(1, min(-(-total_elements // THREADS_PER_BLOCK), MAX_GRID_BLOCKS))


_ARG_DTYPES: dict[str, type] = {"ptr": np.uint64, "i32": np.int32, "i64": np.int64}


@dataclass(frozen=True)
class PackedArgs:
    """Kernel arguments as cuLaunchKernel wants them: an array of pointers to the values.

    `values` keeps each scalar alive for as long as the launch call needs it.
    """

    values: tuple[np.ndarray, ...]
    pointers: np.ndarray  # uint64 [num_args]: address of each value

    @property
    def address(self) -> int:
        return int(self.pointers.ctypes.data)


def pack_args(args: list[tuple[str, int]]) -> PackedArgs:
    """[("ptr"|"i32"|"i64", value), ...] -> PackedArgs (range-checked per C type)."""
    values = []
    for kind, value in args:
        if kind not in _ARG_DTYPES:
            raise ValueError(f"unknown kernel argument kind {kind!r}")
        info = np.iinfo(_ARG_DTYPES[kind])
        if not info.min <= int(value) <= info.max:
            raise ValueError(f"kernel argument {value} does not fit {kind}")
        values.append(np.array([int(value)], dtype=_ARG_DTYPES[kind]))
    pointers = np.array([v.ctypes.data for v in values], dtype=np.uint64)
    return PackedArgs(values=tuple(values), pointers=pointers)


def compile_cubin(source: str, name: str, arch: tuple[int, int]) -> bytes:
    """NVRTC: CUDA C source -> CUBIN for sm_<arch>. Raises CudaError with the compile log."""
    _, _, nvrtc = bindings()
    prog = cuda_call(nvrtc.nvrtcCreateProgram, source.encode(), name.encode(), 0, [], [])
    try:
        opts = [f"--gpu-architecture=sm_{arch[0]}{arch[1]}".encode(), b"-default-device"]
        try:
            cuda_call(nvrtc.nvrtcCompileProgram, prog, len(opts), opts)
        except CudaError as exc:
            size = cuda_call(nvrtc.nvrtcGetProgramLogSize, prog)
            log = b" " * int(size)
            cuda_call(nvrtc.nvrtcGetProgramLog, prog, log)
            raise CudaError(f"{exc}\n{log.decode(errors='replace')}") from exc
        size = int(cuda_call(nvrtc.nvrtcGetCUBINSize, prog))
        cubin = b" " * size
        cuda_call(nvrtc.nvrtcGetCUBIN, prog, cubin)
        return cubin
    finally:
        cuda_call(nvrtc.nvrtcDestroyProgram, prog)


class KVKernels:
    """Compiled KV kernels for one context: one CUmodule per dtype, compiled on first use.

    Thread-safe compile; `close()` unloads every module.
    """

    def __init__(self, context: CudaContext) -> None:
        self._driver, _, _ = bindings()
        self._context = context
        self._modules: dict[str, Any] = {}
        self._functions: dict[str, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def functions(self, dtype: str) -> tuple[Any, Any]:
        """(scatter, block copy) CUfunction handles for `dtype`, compiling once."""
        with self._lock:
            if dtype not in self._functions:
                self._functions[dtype] = self._load(dtype)
            return self._functions[dtype]

    def _load(self, dtype: str) -> tuple[Any, Any]:
        self._context.make_current()
        cubin = compile_cubin(kernel_source(dtype), f"kv_kernels_{dtype}.cu",
                              self._context.compute_capability)
        module = cuda_call(self._driver.cuModuleLoadData, cubin)
        self._modules[dtype] = module
        scatter_name, copy_name = kernel_names(dtype)
        logger.info("compiled KV kernels for %s (%d-byte cubin)", dtype, len(cubin))
        return (cuda_call(self._driver.cuModuleGetFunction, module, scatter_name.encode()),
                cuda_call(self._driver.cuModuleGetFunction, module, copy_name.encode()))

    def launch(self, function: Any, total: int, args: list[tuple[str, int]],
               stream: Stream) -> None:
        """Launch a grid-stride kernel over `total` elements on `stream`."""
        if total <= 0:
            return
        packed = pack_args(args)
        cuda_call(self._driver.cuLaunchKernel, function, grid_size(total), 1, 1,
                  THREADS_PER_BLOCK, 1, 1, 0, stream.handle, packed.address, 0)

    def close(self) -> None:
        with self._lock:
            for module in self._modules.values():
                cuda_call(self._driver.cuModuleUnload, module)
            self._modules.clear()
            self._functions.clear()

    def __enter__(self) -> KVKernels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RowKernel:
    """One NVRTC entry point of one context, compiled at construction, launched with one
    thread block a row (the device sampler's pick and draw kernels)."""

    def __init__(self, context: CudaContext, source: str, entry: str, threads: int) -> None:
        self._driver, _, _ = bindings()
        self._lock = threading.Lock()
        self._threads = threads
        context.make_current()
        cubin = compile_cubin(source, f"{entry}.cu", context.compute_capability)
        self._module: Any = cuda_call(self._driver.cuModuleLoadData, cubin)
        self._function = cuda_call(self._driver.cuModuleGetFunction, self._module,
                                   entry.encode())
        logger.info("compiled %s (%d-byte cubin)", entry, len(cubin))

    def launch_rows(self, rows: int, args: list[tuple[str, int]], stream: Stream) -> None:
        """`rows` blocks of the kernel over `args` on `stream` (nothing when rows <= 0)."""
        if rows <= 0:
            return
        packed = pack_args(args)
        cuda_call(self._driver.cuLaunchKernel, self._function, rows, 1, 1, self._threads, 1, 1,
                  0, stream.handle, packed.address, 0)

    def close(self) -> None:
        with self._lock:
            if self._module is not None:
                cuda_call(self._driver.cuModuleUnload, self._module)
                self._module = None
