"""What the GPU executors (onnxruntime CUDA, TensorRT) share: the device context, the step I/O
(KV pool + step buffers, engine/device/step_io.py), the Executor properties and the per-step
sequence stage -> run -> finish. A subclass only runs its graph in `_run(staged)`."""

from __future__ import annotations

import threading

import numpy as np

from engine.config import ModelConfig
from engine.device.cuda import CudaContext
from engine.device.step_io import DeviceStepIO, StagedStep, StepLimits
from engine.executors.cuda_graphs import BucketSessions, decode_bucket, merge_results, split_mixed
from engine.step_inputs import Bucket
from scheduler.plan import StepPlan, StepResult


class DeviceExecutor:
    """Base of the `scheduler.plan.Executor` implementations with a device-resident KV pool."""

    def __init__(self, config: ModelConfig, *, max_context: int, limits: StepLimits | None,
                 device_id: int) -> None:
        self._config = config
        self._max_context = max_context
        limits = limits or StepLimits(max_context=max_context)
        self._limits = StepLimits(limits.max_num_tokens, limits.max_batch_size,
                                  max(limits.max_context, max_context))
        self._lock = threading.Lock()
        self._context = CudaContext(device_id)
        self._io: DeviceStepIO | None = None
        self._has_argmax = False  # the graph/engine has an `argmax` output
        self._graphs: BucketSessions | None = None  # decode steps replayed as CUDA graphs

    @property
    def block_size(self) -> int:
        return self._device_io().geometry.block_size

    @property
    def num_blocks(self) -> int:
        return self._device_io().geometry.num_blocks

    @property
    def vocab_size(self) -> int:
        return self._config.vocab_size

    @property
    def max_context(self) -> int:
        return self._max_context

    @property
    def max_batch_size(self) -> int:
        """Sequences per step at most (the scheduler plans within it)."""
        return self._limits.max_batch_size

    @property
    def max_num_tokens(self) -> int:
        """Packed tokens per step at most (the scheduler plans within it)."""
        return self._limits.max_num_tokens

    @property
    def samples_on_device(self) -> bool:
        """Tokens are chosen on the device (plans carry `host_logits` / `banned` / `draw`)."""
        return self._device_io().picker is not None

    @property
    def device_io(self) -> DeviceStepIO:
        """The pool and step buffers (tests read the pool back through it)."""
        return self._device_io()

    def _device_io(self) -> DeviceStepIO:
        if self._io is None:
            raise RuntimeError(f"{type(self).__name__} used after close()")
        return self._io

    def execute(self, plan: StepPlan) -> StepResult:
        with self._lock:
            io = self._device_io()
            if not plan.seqs:
                io.copy_blocks_only(plan)
                return StepResult(plan.step_id, np.zeros((0, self.vocab_size), np.float32))
            parts = split_mixed(plan) if self._graphs is not None else None
            if parts is None or self._captured_bucket(parts[0]) is None:
                return self._execute_one(io, plan)
            return merge_results(plan, parts, [self._execute_one(io, p) for p in parts])

    def _execute_one(self, io: DeviceStepIO, plan: StepPlan) -> StepResult:
        """One graph call over `plan` (a decode plan through its captured bucket if any)."""
        staged = io.stage(plan, self._captured_bucket(plan))
        try:
            scatter = not self._run(staged)
            if io.picker is not None:
                logits, argmax, rows, logprobs = io.finish_sampled(staged, scatter)
                return StepResult(plan.step_id, logits, argmax, logits_rows=rows,
                                  logprobs=logprobs)
            logits, argmax = io.finish_with_argmax(staged, self._has_argmax, scatter)
        except BaseException:
            io.stream.synchronize()  # nothing may still read the staging area
            raise
        return StepResult(step_id=plan.step_id, logits=logits, argmax=argmax)

    def _captured_bucket(self, plan: StepPlan) -> Bucket | None:
        """The bucket a decode plan is padded to when its CUDA graph can run, else None."""
        if self._graphs is None:
            return None
        lim, bs = self._limits, self._device_io().geometry.block_size
        bucket = decode_bucket(plan, bs, min(lim.max_batch_size, lim.max_num_tokens),
                               -(-lim.max_context // bs))
        return bucket if bucket is not None and self._graphs.usable(bucket) else None

    @property
    def graph_replays(self) -> int:
        """Decode steps run through a captured CUDA graph so far."""
        return 0 if self._graphs is None else self._graphs.replays

    def _run(self, staged: StagedStep) -> bool:
        """Run the graph over the staged inputs, writing the staged outputs (on the stream);
        True when it wrote the step's K/V into the pool itself (nothing to scatter)."""
        raise NotImplementedError

    def _outputs(self, staged: StagedStep) -> list[tuple[str, object]]:
        """The graph outputs to bind and their device tensors."""
        outputs: list[tuple[str, object]] = [("logits", staged.logits), ("new_kv", staged.new_kv)]
        if self._has_argmax:
            outputs.append(("argmax", staged.argmax))
        return outputs
