"""A host-memory stand-in for cuda-python's driver and NVRTC modules, so that the device layer's
bookkeeping (allocations, offsets, staging, argument packing, kernel index math) runs on CPU.

"Device" memory is numpy memory addressed by real pointers; copies are memmoves; a kernel launch
decodes the packed argument array exactly as the GPU would and runs the kernel's index math in
numpy. Return values mimic cuda-python: `(CUresult, *values)` with the real enum types.
"""

from __future__ import annotations

import ctypes
from types import SimpleNamespace
from typing import Any

import numpy as np

_SIGNATURES = {"kv_scatter": "ppp" + "i" * 5 + "q" * 7, "kv_block_copy": "pp" + "ii" + "qqq",
               "logits_pick": "pppii", "logits_draw": "ppppppp" + "iii"}
_ELEM = {"f16": np.uint16, "bf16": np.uint16, "f32": np.float32}


class FakeCuda:
    """driver + nvrtc fakes over one table of live host allocations."""

    def __init__(self) -> None:
        from cuda.bindings import driver, nvrtc

        self._real_driver, self._real_nvrtc = driver, nvrtc
        self.allocations: dict[int, np.ndarray] = {}
        self.launches: list[str] = []
        self.capturing: list[Any] | None = None  # work recorded while a stream is captured
        self.graphs: dict[int, list[Any]] = {}  # captured graph id -> its recorded work
        self.graph_launches = 0
        self.draws = 0  # rows drawn by the logits_draw emulation
        self.driver = self._make_driver()
        self.nvrtc = self._make_nvrtc()

    # -- memory ---------------------------------------------------------------------------------
    def _alloc(self, nbytes: int) -> int:
        buf = np.empty(int(nbytes), dtype=np.uint8)
        ptr = int(buf.ctypes.data)
        self.allocations[ptr] = buf
        return ptr

    def _free(self, ptr: Any) -> None:
        self.allocations.pop(int(ptr))  # KeyError = double free / bad pointer

    def view(self, ptr: int, dtype: type) -> np.ndarray:
        """The rest of the allocation containing `ptr`, as `dtype` elements from `ptr` on."""
        for base, buf in self.allocations.items():
            if base <= ptr < base + buf.nbytes:
                return buf[ptr - base:].view(np.uint8)[: (buf.nbytes - (ptr - base))
                                                        // np.dtype(dtype).itemsize
                                                        * np.dtype(dtype).itemsize].view(dtype)
        raise AssertionError(f"pointer {ptr:#x} is in no live allocation")

    def _check_range(self, ptr: int, nbytes: int) -> None:
        assert self.view(ptr, np.uint8).nbytes >= nbytes, "copy past the end of an allocation"

    def _copy(self, dst: Any, src: Any, nbytes: int, *_: Any) -> tuple[Any]:
        ctypes.memmove(int(dst), int(src), int(nbytes))
        return (self._ok,)

    # -- kernels --------------------------------------------------------------------------------
    def _launch(self, fn: str, gx: int, gy: int, gz: int, bx: int, by: int, bz: int, smem: int,
                stream: Any, params: int, extra: Any) -> tuple[Any]:
        kind, suffix = fn.rsplit("_", 1)
        sig = _SIGNATURES[kind]
        ptrs = (ctypes.c_uint64 * len(sig)).from_address(params)
        ctype = {"p": ctypes.c_uint64, "i": ctypes.c_int32, "q": ctypes.c_int64}
        args = [ctype[c].from_address(ptrs[i]).value for i, c in enumerate(sig)]
        self._grid = gx
        getattr(self, f"_{kind}")(args, _ELEM[suffix])
        self.launches.append(fn)
        return (self._ok,)

    def _kv_scatter(self, a: list[int], elem: type) -> None:
        pool, src, slots_ptr, planes, tokens, heads, dim, bs = a[:8]
        sps, sts, shs, dps, dbs, dss, dhs = a[8:]
        p, t, h, d = np.meshgrid(np.arange(planes), np.arange(tokens), np.arange(heads),
                                 np.arange(dim), indexing="ij")
        slot = self.view(slots_ptr, np.int64)[:tokens][t]
        keep = slot >= 0
        dst = p * dps + (slot // bs) * dbs + (slot % bs) * dss + h * dhs + d
        self.view(pool, elem)[dst[keep]] = self.view(src, elem)[(p * sps + t * sts + h * shs
                                                                  + d)[keep]]

    def _kv_block_copy(self, a: list[int], elem: type) -> None:
        pool_ptr, pairs_ptr, num_pairs, planes, block_elems, plane_stride, block_stride = a
        pool = self.view(pool_ptr, elem)
        pairs = self.view(pairs_ptr, np.int64)[: 2 * num_pairs].reshape(-1, 2).copy()
        for src, dst in pairs.tolist():
            for p in range(planes):
                s, d = p * plane_stride + src * block_stride, p * plane_stride + dst * block_stride
                pool[d:d + block_elems] = pool[s:s + block_elems]

    def _logits_pick(self, a: list[int], elem: type) -> None:
        """engine/device/sampling.py's kernel: argmax per row (grid = rows), bans skipped."""
        logits_ptr, bans_ptr, out_ptr, vocab, num_bans = a
        rows = self._grid
        x = self.view(logits_ptr, elem)[: rows * vocab].reshape(rows, vocab).copy()
        x[np.isnan(x)] = np.inf
        if num_bans:
            bans = self.view(bans_ptr, np.int64)[: rows * num_bans].reshape(rows, num_bans)
            for r, b in enumerate(bans.tolist()):
                x[r, [i for i in b if 0 <= i < vocab]] = -np.inf
        self.view(out_ptr, np.int64)[:rows] = np.argmax(x, axis=1)

    def _logits_draw(self, a: list[int], elem: type) -> None:
        """engine/device/draw_kernel.py's kernel (grid = drawn rows) as the host reference
        (scheduler/sampling.py `host_draw`), editing the drawn rows in place like the kernel."""
        from engine.device.draw_source import PARAMS
        from scheduler.plan import DeviceDraw
        from scheduler.sampling import apply_edits, host_draw

        logits_ptr, rows_ptr, params_ptr, hist_ptr, bans_ptr, out_ptr, lp_ptr = a[:7]
        vocab, h, b = a[7:]
        n = self._grid
        rows = self.view(rows_ptr, np.int64)[:n].tolist()
        params = self.view(params_ptr, np.float64)[: n * PARAMS].reshape(n, PARAMS).tolist()
        history = self.view(hist_ptr, np.int32)[: n * h].reshape(n, h)
        bans = self.view(bans_ptr, np.int64)[: n * b].reshape(n, b)
        logits, out = self.view(logits_ptr, elem), self.view(out_ptr, np.int64)
        for k, r in enumerate(rows):
            inv_t, top_k, top_p, min_p, u, want, rp, pres, freq, num_prompt, length = params[k]
            draw = DeviceDraw(0.0 if inv_t == 0.0 else 1.0 / inv_t, int(top_k), top_p, min_p, u,
                              rp, pres, freq, history[k, :int(length)].tolist(),
                              int(num_prompt), tuple(t for t in bans[k].tolist() if t >= 0),
                              bool(want))
            row = logits[r * vocab:(r + 1) * vocab]
            out[r], lp = host_draw(row, draw)
            apply_edits(row, draw)
            if lp is not None:
                self.view(lp_ptr, np.float64)[r] = lp
        self.draws += n

    # -- modules --------------------------------------------------------------------------------
    def _make_driver(self) -> SimpleNamespace:
        real = self._real_driver
        self._ok = real.CUresult.CUDA_SUCCESS
        ok = self._ok

        def named(name: str, fn: Any) -> Any:
            fn.__name__ = name
            return fn

        attrs = {"CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR": 8,
                 "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR": 6}
        fns = {
            "cuInit": lambda flags: (ok,), "cuDeviceGet": lambda i: (ok, i),
            "cuDeviceGetCount": lambda: (ok, 1),
            "cuDevicePrimaryCtxRetain": lambda dev: (ok, "ctx"),
            "cuDevicePrimaryCtxRelease": lambda dev: (ok,),
            "cuCtxSetCurrent": lambda ctx: (ok,), "cuCtxSynchronize": lambda: (ok,),
            "cuDeviceGetAttribute": lambda attr, dev: (ok, attrs[attr.name]),
            "cuDeviceGetName": lambda n, dev: (ok, b"Fake GPU\0"),
            "cuMemGetInfo": lambda: (ok, 1 << 30, 1 << 31),
            "cuStreamCreate": lambda flags: (ok, 1), "cuStreamDestroy": lambda s: (ok,),
            "cuStreamSynchronize": lambda s: (ok,),
            "cuMemAlloc": lambda n: (ok, self._alloc(n)),
            "cuMemFree": lambda p: (self._free(p), ok)[1:],
            "cuMemHostAlloc": lambda n, flags: (ok, self._alloc(n)),
            "cuMemFreeHost": lambda p: (self._free(p), ok)[1:],
            "cuMemcpyHtoDAsync": lambda d, s, n, st: (self._check_range(d, n),
                                                      *self._copy(d, s, n))[1:],
            "cuMemcpyDtoHAsync": lambda d, s, n, st: (self._check_range(s, n),
                                                      *self._copy(d, s, n))[1:],
            "cuMemcpyDtoDAsync": lambda d, s, n, st: self._copy(d, s, n),
            "cuMemsetD8Async": lambda d, v, n, st: (ctypes.memset(int(d), v, n), ok)[1:],
            "cuModuleLoadData": lambda image: (ok, "module"),
            "cuModuleGetFunction": lambda mod, name: (ok, name.decode()),
            "cuModuleUnload": lambda mod: (ok,),
            "cuLaunchKernel": lambda *a: self._launch(*a),
            "cuStreamBeginCapture": lambda s, mode: self._begin_capture(),
            "cuStreamEndCapture": lambda s: self._end_capture(),
            "cuGraphInstantiate": lambda graph, flags: (ok, graph),
            "cuGraphLaunch": lambda graph, s: self._graph_launch(graph),
            "cuGraphExecDestroy": lambda graph: (ok,),
            "cuGraphDestroy": lambda graph: (self.graphs.pop(graph), ok)[1:],
        }
        ns = SimpleNamespace(**{k: named(k, v) for k, v in fns.items()})
        ns.CUresult, ns.CUdevice_attribute = real.CUresult, real.CUdevice_attribute
        ns.CUstream_flags, ns.CUstreamCaptureMode = real.CUstream_flags, real.CUstreamCaptureMode
        return ns

    # -- stream capture: work a fake engine records while capturing replays at launch ------------
    def _begin_capture(self) -> tuple[Any]:
        assert self.capturing is None, "nested capture"
        self.capturing = []
        return (self._ok,)

    def _end_capture(self) -> tuple[Any, int]:
        assert self.capturing is not None, "end of a capture that never began"
        graph = len(self.graphs) + 1000
        self.graphs[graph], self.capturing = self.capturing, None
        return self._ok, graph

    def _graph_launch(self, graph: int) -> tuple[Any]:
        self.graph_launches += 1
        for work in self.graphs[graph]:
            work()
        return (self._ok,)

    def _make_nvrtc(self) -> SimpleNamespace:
        real = self._real_nvrtc
        ok = real.nvrtcResult.NVRTC_SUCCESS
        fns = {
            "nvrtcCreateProgram": lambda src, name, n, h, i: (ok, "prog"),
            "nvrtcCompileProgram": lambda prog, n, opts: (ok,),
            "nvrtcGetCUBINSize": lambda prog: (ok, 4),
            "nvrtcGetCUBIN": lambda prog, buf: (ok,),
            "nvrtcDestroyProgram": lambda prog: (ok,),
        }
        ns = SimpleNamespace(**fns)
        for k in fns:
            getattr(ns, k).__name__ = k
        ns.nvrtcResult = real.nvrtcResult
        return ns

    def bindings(self) -> tuple[Any, Any, Any]:
        return self.driver, None, self.nvrtc


def install_fake(monkeypatch: Any, host_ort_cuda: bool = False) -> FakeCuda:
    """Patch the device layer onto a FakeCuda; with `host_ort_cuda`, the onnxruntime CUDA
    executor also opens CPU sessions and binds host pointers (onnxruntime CPU stands in)."""
    from engine.device import cuda, kernels, memory

    fake = FakeCuda()
    for module in (cuda, memory, kernels):
        monkeypatch.setattr(module, "bindings", fake.bindings)
    if host_ort_cuda:
        import onnxruntime as ort

        from engine.executors import ort_cuda
        from engine.executors.ort import session_options

        monkeypatch.setattr(ort_cuda, "_session", lambda p, d: ort.InferenceSession(
            str(p), sess_options=session_options(1), providers=["CPUExecutionProvider"]))
        monkeypatch.setattr(ort_cuda.OrtCudaExecutor, "ORT_DEVICE", "cpu")
    return fake
