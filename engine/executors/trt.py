"""TensorRT executor: the model graph as a TensorRT engine, run with execute_async_v3 on a
cuda-python stream over the device KV pool (engine/device_kv_pool.py).

Start-up: import `tensorrt` (>= 10.15) or `tensorrt_rtx`; build or load the cached engine for
this GPU (trt_build.py); deserialize it. A runtime that refuses this GPU (TensorRT for RTX on
sm_90 returns None from deserialize) raises ONE clear line naming `--backend onnxruntime`.
Per step (engine/device/step_io.py): staged inputs -> block copies -> set_input_shape /
set_tensor_address -> execute_async_v3 -> KV scatter kernel -> logits back through pinned memory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from engine.config import ModelConfig
from engine.device.cuda import CapturedGraph, Stream
from engine.device.step_io import DeviceStepIO, StagedStep, StepLimits
from engine.executors.cuda_graphs import BucketSessions
from engine.executors.device_base import DeviceExecutor
from engine.executors.trt_build import (
    DimRange,
    TensorRTError,
    TrtModule,
    import_tensorrt,
    load_or_build,
    make_logger,
)
from scheduler.plan import StepRefusedError

logger = logging.getLogger(__name__)

_TRT_DTYPES = {"half": "float16", "float": "float32", "bf16": "bfloat16"}


def profile_dims(config: ModelConfig, limits: StepLimits, block_size: int, num_blocks: int
                 ) -> dict[str, DimRange]:
    """(min, opt, max) of every symbolic dim of the graph (engine/builder.py I/O table).

    The pool dim's max is the next power of two of num_blocks so that small changes in the pool
    size (it follows free memory) reuse the cached engine.
    """
    t, b = limits.max_num_tokens, limits.max_batch_size
    max_past_blocks = -(-limits.max_context // block_size)
    rows_per_block = config.num_layers * 2 * config.num_kv_heads
    pool_max = 1 << max(0, (num_blocks - 1).bit_length())
    return {"T": (1, min(t, 64), t), "Tq": (1, min(t, 64), t), "B": (1, min(b, 8), b),
            "R": (1, min(b, 8), b), "MB": (1, min(max_past_blocks, 8), max_past_blocks),
            "BS": (block_size, block_size, block_size),
            "pool_rows": (rows_per_block, rows_per_block * num_blocks, rows_per_block * pool_max)}


def refusal_message(trt: TrtModule, device: str, detail: str = "") -> str:
    """The one line shown when this TensorRT cannot run on this GPU."""
    why = " ".join(detail.split())  # never more than one line
    return (f"{trt.label} cannot run on this GPU ({device})" + (f": {why}" if why else "")
            + "; start the server with --backend onnxruntime instead")


def _validity_detail(runtime: Any, blob: bytes) -> str:
    """TensorRT for RTX explains a refusal through get_engine_validity; others do not."""
    check = getattr(runtime, "get_engine_validity", None)
    if check is None:
        return "deserialize_cuda_engine returned None"
    try:
        validity, diagnostics = check(blob)
    except Exception as exc:  # diagnostics are best effort
        return f"deserialize_cuda_engine returned None ({type(exc).__name__})"
    return f"engine validity {getattr(validity, 'name', validity)}, diagnostics {diagnostics}"


def deserialize_or_refuse(trt: TrtModule, runtime: Any, blob: bytes, device: str) -> Any:
    """runtime.deserialize_cuda_engine(blob), or TensorRTError(refusal_message) when refused."""
    engine = runtime.deserialize_cuda_engine(blob)
    if engine is None:
        raise TensorRTError(refusal_message(trt, device, _validity_detail(runtime, blob)))
    return engine


def engine_io(trt: TrtModule, engine: Any) -> dict[str, tuple[str, str]]:
    """Engine tensor name -> ("input"|"output", dtype name)."""
    out = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = engine.get_tensor_mode(name)
        kind = "input" if mode == trt.module.TensorIOMode.INPUT else "output"
        out[name] = (kind, str(engine.get_tensor_dtype(name)).rsplit(".", 1)[-1].lower())
    return out


class TrtExecutor(DeviceExecutor):
    """`scheduler.plan.Executor` over a TensorRT engine and a device-resident KV pool."""

    def __init__(self, onnx_path: Path, config: ModelConfig, *, num_blocks: int,
                 block_size: int, max_context: int, limits: StepLimits | None = None,
                 device_id: int = 0, engine_file: Path | None = None,
                 cuda_graphs: bool = False) -> None:
        self._trt = import_tensorrt()
        self._engine_file = engine_file  # a `trtserve build` engine, loaded as built
        super().__init__(config, max_context=max_context, limits=limits, device_id=device_id)
        try:
            self._engine = self._load_engine(onnx_path, block_size, num_blocks)
            self._exec = self._engine.create_execution_context()
            if self._exec is None:
                raise TensorRTError(f"{self._trt.label}: could not create an execution context")
            io_names = engine_io(self._trt, self._engine)
            self._has_argmax = io_names.get("argmax", ("", ""))[0] == "output"
            kv_kind = io_names["kv_cache"][1]
            if kv_kind not in _TRT_DTYPES:
                raise TensorRTError(f"engine kv_cache dtype {kv_kind} is not supported")
            self._io = DeviceStepIO(self._context, config, num_blocks=num_blocks,
                                    block_size=block_size, kv_dtype=_TRT_DTYPES[kv_kind],
                                    limits=self._limits)
        except BaseException:
            self._release()
            raise
        if cuda_graphs:  # decode buckets captured on first use (cuda_graphs.py)
            self._graphs = BucketSessions(lambda bucket: _BucketGraph())

    def _device(self) -> str:
        major, minor = self._context.compute_capability
        return f"{self._context.name}, compute capability {major}.{minor}"

    def _load_engine(self, onnx_path: Path, block_size: int, num_blocks: int) -> Any:
        dims = profile_dims(self._config, self._limits, block_size, num_blocks)
        cc = self._context.compute_capability
        try:  # a `trtserve build` engine as built, else the cached one (built on a miss)
            blob = self._engine_file.read_bytes() if self._engine_file else \
                load_or_build(onnx_path, dims, cc=cc, trt=self._trt)[1]
        except TensorRTError as exc:
            sm = f"SM{cc[0]}{cc[1]}"
            if self._trt.flavor == "tensorrt_rtx" and not hasattr(
                    self._trt.module.ComputeCapability, sm):
                raise TensorRTError(refusal_message(self._trt, self._device(), str(exc))) from exc
            raise
        self._runtime = self._trt.module.Runtime(make_logger(self._trt.module))
        engine = deserialize_or_refuse(self._trt, self._runtime, blob, self._device())
        logger.info("%s engine ready on %s: %s", self._trt.label, self._device(),
                    engine_io(self._trt, engine))
        return engine

    def _run(self, staged: StagedStep) -> bool:
        """The engine writes `new_kv` for the scatter: never the pool itself (False)."""
        self._bind(staged)
        stream = self._device_io().stream
        if staged.bucket is None or self._graphs is None:
            self._execute(stream)
            return False
        entry = self._graphs.get(staged.bucket)
        assert isinstance(entry, _BucketGraph)
        try:
            if entry.graph is None:  # a plain run makes this step's outputs, then capture it
                self._execute(stream)
                entry.graph = CapturedGraph(stream, lambda: self._execute(stream))
            else:
                entry.graph.launch(stream)
                self._graphs.replays += 1
        except Exception as exc:  # capture refused: this bucket runs uncaptured from now on
            stream.synchronize()
            self._graphs.disable(staged.bucket, exc)
            self._execute(stream)
        return False

    def _execute(self, stream: Stream) -> None:
        if not self._exec.execute_async_v3(int(stream)):
            raise TensorRTError(f"{self._trt.label}: execute_async_v3 failed (see log above)")

    def _bind(self, staged: StagedStep) -> None:
        """Input shapes and every tensor address of the step (a bucket: the same each time)."""
        ctx = self._exec
        for name, t in staged.inputs.items():
            if not ctx.set_input_shape(name, t.shape):
                raise StepRefusedError(f"{self._trt.label}: input {name} shape {t.shape} is "
                                       "outside the engine's optimization profile")
            ctx.set_tensor_address(name, t.ptr)
        for name, t in self._outputs(staged):
            shape = tuple(ctx.get_tensor_shape(name))
            if shape != t.shape:
                raise StepRefusedError(f"{self._trt.label}: output {name} has shape {shape}, "
                                       f"expected {t.shape}")
            ctx.set_tensor_address(name, t.ptr)

    def _release(self) -> None:
        if self._graphs is not None:
            for bucket in self._graphs.buckets:
                graph = self._graphs.get(bucket).graph  # type: ignore[attr-defined]
                if graph is not None:
                    graph.close()
            self._graphs.clear()
        self._exec = None
        self._engine = None
        self._runtime = None
        if self._io is not None:
            self._context.make_current()
            self._io.close()
            self._io = None
        self._context.close()

    def close(self) -> None:
        with self._lock:
            if self._context.closed:
                return
            self._release()


class _BucketGraph:
    """A decode bucket's CUDA graph, captured at the bucket's first step."""

    def __init__(self) -> None:
        self.graph: CapturedGraph | None = None
