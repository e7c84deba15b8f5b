"""onnxruntime CUDA executor: the model graph (fp16, bf16 or fp32) on onnxruntime-gpu's CUDA
execution provider, with the KV pool and every step buffer allocated by cuda-python and bound by
pointer (IOBinding).

Per step (engine/device/step_io.py): inputs staged in one H2D copy, block copies by kernel,
graph run with `kv_cache` bound in place and `new_kv`/`logits` bound to device buffers, new K/V
scattered into the pool by the NVRTC kernel, logits copied back through pinned memory. The pool
is never copied to the host. Decode buckets run `model_paged.onnx` when the build has it and
the CUDA EP runs its PagedAttention (engine/graph/paged.py): each layer's K and V slabs of the
pool are bound as inputs of their own, the op writes the new K/V in place (no scatter); else
they run `model_decode.onnx`. Other steps likewise run `model_paged_prefill.onnx` (the step's
(sequence, kv head) pairs staged by the host) when there is one. (onnxruntime runs on its own
stream: giving it ours, with runs that do not wait, made its sessions abort when destroyed:
cudaFreeHost "operation not permitted", seen on the H200 with onnxruntime-gpu 1.31.1.)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from onnx import TensorProto

from engine.builder import INPUT_NAMES
from engine.config import ModelConfig
from engine.device.step_io import DeviceStepIO, DeviceTensor, StagedStep, StepLimits
from engine.dtypes import NUMPY_DTYPES
from engine.executors.cuda_graphs import BucketSessions, bucket_dims, startup_buckets
from engine.executors.device_base import DeviceExecutor
from engine.graph.gqa import DECODE_MODEL_FILE
from engine.graph.paged import (
    PAGED_MODEL_FILE,
    PAGED_STEP_INPUTS,
    PREFILL_MODEL_FILE,
    PREFILL_STEP_INPUTS,
    cache_input_names,
)
from engine.step_inputs import Bucket
from scheduler.plan import StepPlan

logger = logging.getLogger(__name__)

CAPTURE_RUNS = 3  # onnxruntime runs twice plainly, then captures the CUDA graph on the third
_KV_TYPES = {TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16",
             TensorProto.FLOAT: "float32"}


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


def model_kv_dtype(model_path: Path) -> str:
    """The pool dtype the graph was built for: its kv_cache input's element type (read from the
    graph alone, not its weights)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    for value in graph.input:
        if value.name == "kv_cache":
            elem = value.type.tensor_type.elem_type
            if elem not in _KV_TYPES:
                raise ValueError(f"kv_cache element type {TensorProto.DataType.Name(elem)} is "
                                 "not supported on CUDA")
            return _KV_TYPES[elem]
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
        paged, prefill = (model_path.parent / f for f in (PAGED_MODEL_FILE, PREFILL_MODEL_FILE))
        self._paged_path: Path | None = paged if paged.is_file() else None
        self._bindings: dict[object, tuple[tuple, object]] = {}  # session -> (its key, binding)
        self._paged_inputs: dict[object, tuple[str, ...]] = {}  # paged session -> step inputs
        self.paged_runs = 0  # steps a paged graph ran (K/V written in place)
        try:
            kv_dtype = model_kv_dtype(model_path)
            self._io = DeviceStepIO(self._context, config, num_blocks=num_blocks,
                                    block_size=block_size, kv_dtype=kv_dtype,
                                    limits=self._limits, device_sampling=device_sampling,
                                    paged=paged.is_file() or prefill.is_file())
            self._session = _session(model_path, device_id)
            self._has_argmax = "argmax" in {o.name for o in self._session.get_outputs()}
            self._prefill = self._prefill_session(prefill) if prefill.is_file() else None
            # without the paged prefill graph, single-sequence steps (a prompt, a chunk of one)
            # run the decode graph uncaptured: its GroupQueryAttention layers launch far fewer
            # kernels than the general graph's (with it, no session of that graph is loaded)
            self._one_seq = (None if self._decode_path == model_path or self._prefill is not None
                             else _session(self._decode_path, device_id))
        except BaseException:
            if self._io is not None:
                self._io.close()
                self._io = None
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
        """The bucket's session over the paged graph; over the decode graph when there is none
        or the CUDA EP cannot run it (then for every later bucket too)."""
        g = self._device_io().geometry
        dims = bucket_dims(bucket, g.graph_shape[0], g.block_size,
                           g.num_kv_heads * g.num_blocks)
        if self._paged_path is not None:
            try:
                session = _graph_session(self._paged_path, self._device_id, dims, self._capture)
                self._paged_inputs[session] = PAGED_STEP_INPUTS
                return session
            except Exception as exc:
                logger.warning("decode buckets run %s: %s cannot run here: %s",
                               self._decode_path.name, self._paged_path.name,
                               " ".join(str(exc).split())[:300])
                self._paged_path = None
        return _graph_session(self._decode_path, self._device_id, dims, self._capture)

    def _run(self, staged: StagedStep) -> bool:
        io = self._device_io()
        io.stream.synchronize()  # staged inputs and block copies land before onnxruntime reads
        if (staged.bucket is not None and self._graphs is not None
                and self._graphs.usable(staged.bucket)):  # not disabled since it was staged
            session = self._graphs.get(staged.bucket)
            try:
                in_place = self._run_session(session, staged)
                # a replay, unless a start-up capture run or a bucket session without capture
                self._graphs.replays += int(staged.num_rows > 0 and self._capture)
                return in_place
            except Exception as exc:  # capture refused: this bucket runs uncaptured from now on
                self._forget(session)  # the session (its weights) can go
                self._graphs.disable(staged.bucket, exc)
        if self._prefill is not None and staged.bucket is None:
            try:
                return self._run_session(self._prefill, staged)
            except Exception as exc:  # its K/V writes equal the scatter's: rerun without it
                logger.warning("%s failed, other steps run without it: %s", PREFILL_MODEL_FILE,
                               " ".join(str(exc).split())[:300])
                self._forget(self._prefill)
                self._prefill = None
        one_seq = self._one_seq is not None and staged.inputs["block_tables"].shape[0] == 1
        return self._run_session(self._one_seq if one_seq else self._session, staged)

    def _prefill_session(self, path: Path) -> object | None:
        """The paged prefill graph's session, or None where the CUDA EP cannot make it."""
        try:
            session = _session(path, self._device_id)
        except Exception as exc:
            logger.warning("other steps run the general graph: %s cannot run here: %s",
                           path.name, " ".join(str(exc).split())[:300])
            return None
        self._paged_inputs[session] = PREFILL_STEP_INPUTS
        return session

    def _forget(self, session: object) -> None:
        self._bindings.pop(session, None)
        self._paged_inputs.pop(session, None)

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
                scatter = not self._run(staged)
            io.finish_with_argmax(staged, self._has_argmax, scatter)

    def _run_session(self, session: object, staged: StagedStep) -> bool:
        """Run and wait: onnxruntime synchronizes its stream at the end of a run (the default
        run options), so the outputs are complete before the finish reads them on ours. True
        for the paged graph (it wrote the step's K/V into the pool)."""
        names = self._paged_inputs.get(session)
        binding = self._binding(session, staged, names)
        session.run_with_iobinding(binding)  # type: ignore[attr-defined]
        self.paged_runs += int(names is not None)
        return names is not None

    def _binding(self, session: object, staged: StagedStep, paged: tuple[str, ...] | None
                 ) -> object:
        """The session's binding of the staged buffers (`paged`: a paged graph's step inputs;
        its pool slabs are bound too), made again only when an address or a shape moved: a
        bucket's buffers sit at the same addresses at every step."""
        inputs = {n: staged.inputs[n] for n in (paged or INPUT_NAMES) if n in staged.inputs}
        outputs = [(n, t) for n, t in self._outputs(staged) if not (paged and n == "new_kv")]
        key = (tuple((n, t.ptr, t.shape) for n, t in inputs.items()),
               tuple((n, t.ptr, t.shape) for n, t in outputs))
        cached = self._bindings.get(session)
        if cached is not None and cached[0] == key:
            return cached[1]
        binding = session.io_binding()  # type: ignore[attr-defined]
        for name, t in ({**inputs, **self._slabs()} if paged else inputs).items():
            binding.bind_input(name, self.ORT_DEVICE, self._device_id, element_type(t.dtype),
                               list(t.shape), t.ptr)
        for name, t in outputs:
            binding.bind_output(name, self.ORT_DEVICE, self._device_id, element_type(t.dtype),
                                list(t.shape), t.ptr)
        self._bindings[session] = (key, binding)
        return binding

    def _slabs(self) -> dict[str, DeviceTensor]:
        """Every layer's K and V slab of the pool, [KVH * NB, BS, 1, D] each, in place: the
        paged graph's cache inputs (the same addresses for the pool's life)."""
        g, pool = self._device_io().geometry, self._device_io().pool
        shape = (g.num_kv_heads * g.num_blocks, g.block_size, 1, g.head_dim)
        return {name: DeviceTensor(pool.ptr + plane * g.plane_stride * g.itemsize, shape,
                                   g.np_dtype)
                for plane, name in enumerate(cache_input_names(g.num_layers))}

    def close(self) -> None:
        with self._lock:
            if self._io is None:
                return
            self._context.make_current()
            # sessions first: they may still hold device buffers bound by address
            self._bindings.clear()
            self._paged_inputs.clear()
            if self._graphs is not None:
                self._graphs.clear()
            self._session = self._one_seq = self._prefill = None
            self._io.close()
            self._io = None
            self._context.close()
