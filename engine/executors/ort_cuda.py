"""onnxruntime CUDA executor: the model graph (fp16, bf16 or fp32) on onnxruntime-gpu's CUDA
execution provider, with the KV pool and every step buffer allocated by cuda-python and bound by
pointer (IOBinding).

Per step (engine/device/step_io.py): inputs staged in one H2D copy, block copies by kernel,
graph run with `kv_cache` bound in place and `new_kv`/`logits` bound to device buffers, new K/V
scattered into the pool by the NVRTC kernel, logits copied back through pinned memory. The pool
is never copied to the host.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from onnx import TensorProto

from engine.config import ModelConfig
from engine.device.step_io import DeviceStepIO, StagedStep, StepLimits
from engine.dtypes import NUMPY_DTYPES
from engine.executors.cuda_graphs import BucketSessions, bucket_dims, startup_buckets
from engine.executors.device_base import DeviceExecutor
from engine.graph.gqa import DECODE_MODEL_FILE
from engine.step_inputs import Bucket
from scheduler.plan import StepPlan

logger = logging.getLogger(__name__)

CAPTURE_RUNS = 3  # onnxruntime runs twice plainly, then captures the CUDA graph on the third
_ORT_TYPES = {"tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
              "tensor(float)": "float32"}


def element_type(dtype: np.dtype) -> type | int:
    """What IOBinding takes as a buffer's element type: the numpy type, or for bfloat16 (which
    onnxruntime does not know as a numpy type) the ONNX type number."""
    return TensorProto.BFLOAT16 if dtype == NUMPY_DTYPES["bfloat16"] else dtype.type


class OrtCudaUnavailableError(RuntimeError):
    """onnxruntime here has no CUDA execution provider."""


def _session(model_path: Path, device_id: int) -> object:
    import onnxruntime as ort

    from engine.executors.ort import session_options

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise OrtCudaUnavailableError(
            "onnxruntime has no CUDAExecutionProvider here (installed: "
            f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu in place of "
            "onnxruntime, or use the CPU executor")
    opts = session_options(intra_op_threads=1)
    providers = [("CUDAExecutionProvider", {"device_id": str(device_id)}), "CPUExecutionProvider"]
    return ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)


def _graph_session(model_path: Path, device_id: int, dims: dict[str, int],
                   capture: bool = True) -> object:
    """A session with every symbolic dim fixed and the whole run captured as a CUDA graph
    (replayed from the third run on; onnxruntime refuses it if a node lands off the CUDA EP)."""
    import onnxruntime as ort

    from engine.executors.ort import session_options

    opts = session_options(intra_op_threads=1)
    for name, value in dims.items():
        opts.add_free_dimension_override_by_name(name, value)
    options = {"device_id": str(device_id), "enable_cuda_graph": "1" if capture else "0"}
    return ort.InferenceSession(str(model_path), sess_options=opts,
                                providers=[("CUDAExecutionProvider", options)])


def graph_kv_dtype(session: object) -> str:
    """The pool dtype the graph was built for (its kv_cache input's element type)."""
    for value in session.get_inputs():  # type: ignore[attr-defined]
        if value.name == "kv_cache":
            if value.type not in _ORT_TYPES:
                raise ValueError(f"kv_cache element type {value.type} is not supported on CUDA")
            return _ORT_TYPES[value.type]
    raise ValueError("graph has no kv_cache input")


def decode_graph_path(model_path: Path) -> Path:
    """The graph the decode buckets run: model_decode.onnx beside the model (GroupQueryAttention,
    engine/graph/gqa.py) when the build wrote one, else the model itself."""
    decode = model_path.parent / DECODE_MODEL_FILE
    return decode if decode.is_file() else model_path


class OrtCudaExecutor(DeviceExecutor):
    """`scheduler.plan.Executor` over onnxruntime's CUDA EP with a device-resident KV pool."""

    ORT_DEVICE = "cuda"  # IOBinding device of every bound buffer (tests on CPU bind "cpu")

    def __init__(self, model_path: Path, config: ModelConfig, *, num_blocks: int,
                 block_size: int, max_context: int, limits: StepLimits | None = None,
                 device_id: int = 0, cuda_graphs: bool = False,
                 device_sampling: bool = True) -> None:
        super().__init__(config, max_context=max_context, limits=limits, device_id=device_id)
        self._device_id = device_id
        self._model_path = model_path
        self._decode_path = decode_graph_path(model_path)
        try:
            self._session = _session(model_path, device_id)
            kv_dtype = graph_kv_dtype(self._session)
            self._has_argmax = "argmax" in {o.name for o in self._session.get_outputs()}
            self._io = DeviceStepIO(self._context, config, num_blocks=num_blocks,
                                    block_size=block_size, kv_dtype=kv_dtype,
                                    limits=self._limits, device_sampling=device_sampling)
        except BaseException:
            self._context.close()
            raise
        # Decode steps always run through the fixed-shape bucket sessions, replayed as CUDA
        # graphs or not: both modes run the same kernels, so they give the same tokens.
        self._capture = cuda_graphs
        self._graphs = BucketSessions(self._bucket_session)
        try:
            self._capture_at_startup()
        except BaseException:
            self.close()
            raise
        logger.info("onnxruntime CUDA executor on device %d (%s), %s KV pool of %d blocks, "
                    "decode CUDA graphs %s", device_id, self._context.name, kv_dtype, num_blocks,
                    "on" if cuda_graphs else "off")

    def _bucket_session(self, bucket: Bucket) -> object:
        g = self._device_io().geometry
        return _graph_session(self._decode_path, self._device_id,
                              bucket_dims(bucket, g.graph_shape[0], g.block_size), self._capture)

    def _run(self, staged: StagedStep) -> None:
        io = self._device_io()
        io.stream.synchronize()  # staged inputs and block copies land before onnxruntime reads
        if staged.bucket is not None and self._graphs is not None:
            try:
                self._run_session(self._graphs.get(staged.bucket), staged)
                # a replay, unless a start-up capture run or a bucket session without capture
                self._graphs.replays += int(staged.num_rows > 0 and self._capture)
                return
            except Exception as exc:  # capture refused: this bucket runs uncaptured from now on
                self._graphs.disable(staged.bucket, exc)
        self._run_session(self._session, staged)

    def _capture_at_startup(self) -> None:
        """Make (and capture, with CUDA graphs on) the start-up buckets (every batch bucket,
        shortest context) with steps of pad rows only (no KV written), so serving does not stall
        on them later."""
        graphs, io, lim = self._graphs, self._device_io(), self._limits
        assert graphs is not None
        bs = io.geometry.block_size
        for bucket in startup_buckets(min(lim.max_batch_size, lim.max_num_tokens),
                                      -(-lim.max_context // bs)):
            if not graphs.usable(bucket):
                continue
            staged = io.stage(StepPlan(-1, []), bucket)
            for _ in range(CAPTURE_RUNS if self._capture else 1):
                self._run(staged)
            io.finish_with_argmax(staged, self._has_argmax)

    def _run_session(self, session: object, staged: StagedStep) -> None:
        binding = session.io_binding()  # type: ignore[attr-defined]
        for name, t in staged.inputs.items():
            binding.bind_input(name, self.ORT_DEVICE, self._device_id, element_type(t.dtype),
                               list(t.shape), t.ptr)
        for name, t in self._outputs(staged):
            binding.bind_output(name, self.ORT_DEVICE, self._device_id, element_type(t.dtype),
                                list(t.shape), t.ptr)
        session.run_with_iobinding(binding)  # type: ignore[attr-defined]
        binding.synchronize_outputs()

    def close(self) -> None:
        with self._lock:
            if self._io is None:
                return
            self._context.make_current()
            self._io.close()
            self._io = None
            self._session = None
            if self._graphs is not None:
                self._graphs.clear()
            self._context.close()
