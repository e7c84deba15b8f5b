"""onnxruntime executor: runs the model graph (engine/builder.py) over a host KV pool.

Per step: block copies -> pack the plan into the graph's small index inputs (numpy) -> run via
IOBinding with the pool bound in place (no per-step copy) and the outputs bound to numpy arrays
allocated here (no copy out of onnxruntime's memory) -> scatter the new K/V into the pool by slot
mapping -> logits rows (and their in-graph argmax) in plan order.

Given the single-token graph of a Q4 GGUF (engine/graph/single_token.py), a plan of one token with
a past runs through it (engine/executors/single_token_runner.py): 4-bit weights rather than fp32,
the past read and appended in place in the sequence's mirror (engine/executors/past_mirror.py),
not gathered from the pool. Else dense.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engine.config import ModelConfig
from engine.executors.packing import PAD_SLACK, split_for_padding
from engine.executors.single_token_runner import SingleTokenRunner
from engine.host_kv_pool import HostKVPool
from engine.step_inputs import pack_seqs
from scheduler.plan import ScheduledSeq, StepPlan, StepRefusedError, StepResult

logger = logging.getLogger(__name__)

DENSE = "dense"  # the model graph
SINGLE_TOKEN = "single_token"  # the graph for calls of one token, when given
# The single-token session splits each parallel loop into shrinking blocks that idle threads
# take, not one fixed share per thread: a one-token step runs ~1,300 short nodes, and with the
# server's front end and other processes on the same cores a fixed share waits for a thread
# that lost its core (bench/results/engine_cpu.md). 0 = onnxruntime's fixed shares.
SINGLE_TOKEN_DYNAMIC_BLOCK_BASE = 4


def session_options(intra_op_threads: int | None = None) -> ort.SessionOptions:
    """Tuned for a small CPU: all graph optimizations, one intra-op thread per core."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = intra_op_threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


def open_session(path: Path, providers: Sequence[str], intra_op_threads: int | None,
                 profile_prefix: str | None, stop_spinning: bool = False,
                 dynamic_block_base: int = 0) -> ort.InferenceSession:
    """An InferenceSession with `session_options`; profiled when `profile_prefix` is given;
    `dynamic_block_base` > 0: onnxruntime's session.intra_op.dynamic_block_base.

    `stop_spinning`: the intra-op workers stop spinning when a run ends. Needed when two sessions
    take turns on the same cores: an idle session's workers otherwise spin through the other's
    run (measured, 2 cores, SmolLM2 alternating 1- and 2-token steps: 30-33 / 42-51 ms a step
    against 15-17 / 22-25 ms with the spinning stopped)."""
    opts = session_options(intra_op_threads)
    if stop_spinning:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    if dynamic_block_base > 0:
        opts.add_session_config_entry("session.intra_op.dynamic_block_base",
                                      str(dynamic_block_base))
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))


class OrtExecutor:
    """`scheduler.plan.Executor` over onnxruntime with a numpy KV pool bound by pointer;
    `single_token_model` runs the graph calls of one token with a past."""

    def __init__(self, model_path: Path, config: ModelConfig, *, num_blocks: int,
                 block_size: int, max_context: int,
                 providers: Sequence[str] = ("CPUExecutionProvider",),
                 kv_dtype: np.dtype | str = np.float32,
                 intra_op_threads: int | None = None,
                 enable_profiling: bool = False,
                 pad_slack: int = PAD_SLACK,
                 single_token_model: Path | None = None) -> None:
        def session(path: Path, name: str) -> ort.InferenceSession:
            prefix = f"onnxruntime_profile_{name}" if enable_profiling else None
            return open_session(path, providers, intra_op_threads, prefix,
                                stop_spinning=single_token_model is not None,
                                dynamic_block_base=SINGLE_TOKEN_DYNAMIC_BLOCK_BASE
                                if name == SINGLE_TOKEN else 0)

        self._session = session(model_path, DENSE)
        self._runs = {DENSE: 0, SINGLE_TOKEN: 0}
        self._config = config
        self._max_context = max_context
        self._pad_slack = pad_slack
        self._pool = HostKVPool(config, num_blocks, block_size, kv_dtype)
        self._has_argmax = "argmax" in {o.name for o in self._session.get_outputs()}
        self._single: SingleTokenRunner | None = None
        if single_token_model is not None:
            if self._has_argmax:
                raise ValueError(f"{model_path}: a half-precision graph has no single-token "
                                 "graph beside it")
            self._single = SingleTokenRunner(
                session(single_token_model, SINGLE_TOKEN), config, block_size,
                min(max_context, num_blocks * block_size), self._pool.data.dtype,
                single_token_model)
        self._lock = threading.Lock()
        self._closed = False
        self._kv_shape = (config.num_layers, 2, config.num_kv_heads, config.head_dim)
        logger.info("onnxruntime session on %s (%s; single-token graph %s)",
                    self._session.get_providers(), model_path, single_token_model)

    @property
    def block_size(self) -> int:
        return self._pool.block_size

    @property
    def num_blocks(self) -> int:
        return self._pool.num_blocks

    @property
    def vocab_size(self) -> int:
        return self._config.vocab_size

    @property
    def max_context(self) -> int:
        return self._max_context

    @property
    def pool(self) -> HostKVPool:
        return self._pool

    @property
    def session(self) -> ort.InferenceSession:
        return self._session

    @property
    def single_token_session(self) -> ort.InferenceSession | None:
        return None if self._single is None else self._single.session

    @property
    def single_token(self) -> SingleTokenRunner | None:
        return self._single

    @property
    def runs(self) -> dict[str, int]:
        """Graph calls so far per session: {"dense": n, "single_token": m}."""
        return dict(self._runs)

    def execute(self, plan: StepPlan) -> StepResult:
        with self._lock:
            if self._closed:
                raise RuntimeError("OrtExecutor.execute after close()")
            self._check(plan)
            self._pool.copy_blocks(plan.block_copies)
            if self._single is not None:
                self._single.forget(set(), {dst for _, dst in plan.block_copies})
            if not plan.seqs:
                return StepResult(plan.step_id, np.zeros((0, self.vocab_size), np.float32),
                                  np.zeros(0, np.int64) if self._has_argmax else None)
            groups = split_for_padding(plan.seqs, self._pad_slack)
            if len(groups) == 1:
                logits, argmax = self._run_group(plan.seqs, alone=len(plan.seqs) == 1)
                return StepResult(step_id=plan.step_id, logits=logits, argmax=argmax)
            rows: dict[int, tuple[np.ndarray, np.int64 | None]] = {}
            for group in groups:
                logits, argmax = self._run_group([plan.seqs[i] for i in group], alone=False)
                wanted = [i for i in group if plan.seqs[i].want_logits]
                picks = argmax if argmax is not None else [None] * len(wanted)
                rows.update(zip(wanted, zip(logits, picks, strict=True), strict=True))
            return self._in_plan_order(plan.step_id, rows)

    def _run_group(self, seqs: list[ScheduledSeq], alone: bool
                   ) -> tuple[np.ndarray, np.ndarray | None]:
        """One graph call: logits (and argmax) of the group's want_logits rows; new K/V into the
        pool (and the mirror, when read). Only a whole plan (`alone`) of one token with a past
        runs the single-token graph: lone decodes inside bigger plans stay dense, so sequences
        taking turns there cannot make the mirror copy their pasts in and out every step."""
        if self._single is not None and alone and self._single.accepts(seqs[0]):
            self._runs[SINGLE_TOKEN] += 1
            seq = seqs[0]
            logits, new_kv = self._single.run(seq, self._pool)
            block, offset = divmod(seq.start_pos, self.block_size)
            self._pool.write_token(seq.block_table[block], offset, new_kv)
            return logits, None
        if self._single is not None:
            self._single.forget({s.seq_id for s in seqs}, set())
        self._runs[DENSE] += 1
        packed = pack_seqs(seqs, self.block_size)
        logits, argmax, new_kv = self._run(packed.feeds)
        self._pool.write(packed.slot_blocks, packed.slot_offsets, new_kv)
        return logits, argmax

    def _in_plan_order(self, step_id: int,
                       rows: dict[int, tuple[np.ndarray, np.int64 | None]]) -> StepResult:
        order = sorted(rows)
        if not order:
            return StepResult(step_id, np.zeros((0, self.vocab_size), dtype=np.float32),
                              np.zeros(0, np.int64) if self._has_argmax else None)
        logits = np.stack([rows[i][0] for i in order]).astype(np.float32, copy=False)
        argmax = (np.array([rows[i][1] for i in order], dtype=np.int64)
                  if self._has_argmax else None)
        return StepResult(step_id, logits, argmax)

    def _run(self, feeds: dict[str, np.ndarray]
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Runs the dense graph over the pool bound as `kv_cache`, every output bound to a fresh
        numpy array (a new one per step: the caller may still hold the previous step's
        logits)."""
        view = self._pool.graph_view
        session = self._session
        binding = session.io_binding()
        binding.bind_input("kv_cache", "cpu", 0, view.dtype.type, list(view.shape),
                           view.ctypes.data)
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        rows, tokens = len(feeds["logit_index"]), len(feeds["input_ids"])
        logits = np.empty((rows, self.vocab_size), dtype=np.float32)
        layers, two, kvh, d = self._kv_shape
        new_kv = np.empty((layers, two, kvh, tokens, d), dtype=view.dtype)
        outputs = [("logits", logits), ("new_kv", new_kv)]
        argmax = np.empty(rows, dtype=np.int64) if self._has_argmax else None
        if argmax is not None:
            outputs.append(("argmax", argmax))
        for name, array in outputs:
            binding.bind_output(name, "cpu", 0, array.dtype.type, list(array.shape),
                                array.ctypes.data)
        session.run_with_iobinding(binding)
        return logits, argmax, new_kv

    def _check(self, plan: StepPlan) -> None:
        for seq in plan.seqs:
            end = seq.start_pos + len(seq.token_ids)
            if not seq.token_ids or end > self._max_context:
                raise StepRefusedError(f"seq {seq.seq_id}: {len(seq.token_ids)} tokens at "
                                       f"{seq.start_pos} do not fit max_context "
                                       f"{self._max_context}")
            if len(seq.block_table) * self.block_size < end:
                raise StepRefusedError(f"seq {seq.seq_id}: block table too short for {end} "
                                       "tokens")
        for src, dst in plan.block_copies:
            if not (0 <= src < self.num_blocks and 0 <= dst < self.num_blocks):
                raise StepRefusedError(f"block copy {src}->{dst} outside "
                                       f"0..{self.num_blocks - 1}")

    def end_profiling(self) -> str:
        """Stops onnxruntime's profiler and returns the dense session's trace file path."""
        return self._session.end_profiling()

    def end_single_token_profiling(self) -> str | None:
        """Stops the single-token session's profiler; its trace file path (None without it)."""
        return None if self._single is None else self._single.session.end_profiling()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._session = None  # type: ignore[assignment]
            if self._single is not None:
                self._single.close()
                self._single = None
            self._pool.data = np.zeros(0, dtype=self._pool.data.dtype)
