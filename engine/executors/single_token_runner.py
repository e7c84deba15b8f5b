"""The single-token session of OrtExecutor (engine/executors/ort.py): one-token decode steps of
one sequence through the Q4 graph (engine/graph/single_token.py) over that sequence's past
mirror (engine/executors/past_mirror.py).

The mirror's buffers are bound once, as both the graph's past inputs and its present outputs
(the same memory: GroupQueryAttention appends the token's K/V in place), and so are three small
arrays that a step overwrites with its token, position and logit row: a step binds only a
fresh logits array (the caller may still hold the previous one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from engine.config import ModelConfig
from engine.executors.past_mirror import PastMirror
from engine.graph.single_token import (
    SINGLE_TOKEN_FEEDS,
    past_input_names,
    present_output_names,
)
from engine.host_kv_pool import HostKVPool
from scheduler.plan import ScheduledSeq


def check_single_io(session: ort.InferenceSession, config: ModelConfig, path: Path) -> None:
    """The single-token graph reads SINGLE_TOKEN_FEEDS and every layer's past buffer, and
    writes the logits and every layer's present buffer."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    want_in = [*SINGLE_TOKEN_FEEDS, *past_input_names(config.num_layers)]
    want_out = ["logits", *present_output_names(config.num_layers)]
    if inputs != want_in or outputs != want_out:
        raise ValueError(f"{path}: inputs/outputs {inputs} / {outputs} are not the single-token "
                         f"graph's {want_in} / {want_out} (rebuild the graph)")


class SingleTokenRunner:
    """Runs one-token steps with a past of one sequence at a time; owns the mirror and the
    session's binding."""

    def __init__(self, session: ort.InferenceSession, config: ModelConfig, block_size: int,
                 capacity: int, dtype: np.dtype, path: Path) -> None:
        check_single_io(session, config, path)
        self.session = session
        self._config = config
        # GroupQueryAttention's RoPE tables end at max_position_embeddings
        self.mirror = PastMirror(config, block_size,
                                 min(capacity, config.max_position_embeddings), dtype)
        self._binding: ort.IOBinding | None = None
        self._bound_rows = 1  # rows of logit_index bound: 1, or 0 for a step without logits
        # bound by pointer; each step writes its token and position here
        self._token, self._position = np.zeros(1, np.int64), np.zeros(1, np.int64)
        self._logit_row = np.zeros(1, np.int64)  # the one token's row, 0

    def accepts(self, seq: ScheduledSeq) -> bool:
        """One token with a past, at a position inside the mirror."""
        return len(seq.token_ids) == 1 and 0 < seq.start_pos < self.mirror.capacity

    def run(self, seq: ScheduledSeq, pool: HostKVPool) -> tuple[np.ndarray, np.ndarray]:
        """-> (logits [R, vocab] (R = 1 if seq.want_logits else 0), the step's K/V
        [L, 2, KVH, 1, D], a view into the mirror that the caller writes into the pool)."""
        self.mirror.prepare(seq, pool)
        binding = self._bind(seq.want_logits)
        self._token[0], self._position[0] = seq.token_ids[0], seq.start_pos
        logits = np.empty((int(seq.want_logits), self._config.vocab_size), np.float32)
        binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape),
                            logits.ctypes.data)
        self.session.run_with_iobinding(binding)
        new_kv = self.mirror.written()
        self.mirror.commit(seq)
        return logits, new_kv

    def _bind(self, want_logits: bool) -> ort.IOBinding:
        if self._binding is None:
            binding = self.session.io_binding()
            layers = self._config.num_layers
            for past, present, buffer in zip(past_input_names(layers),
                                             present_output_names(layers),
                                             self.mirror.buffers(), strict=True):
                shape, ptr = list(buffer.shape), buffer.ctypes.data
                binding.bind_input(past, "cpu", 0, buffer.dtype.type, shape, ptr)
                binding.bind_output(present, "cpu", 0, buffer.dtype.type, shape, ptr)
            for name, array in zip(SINGLE_TOKEN_FEEDS, (self._token, self._position,
                                                        self._logit_row), strict=True):
                binding.bind_input(name, "cpu", 0, np.int64, [1], array.ctypes.data)
            self._binding, self._bound_rows = binding, 1
        if int(want_logits) != self._bound_rows:  # a step that wants no logits (rare)
            self._bound_rows = int(want_logits)
            self._binding.bind_input("logit_index", "cpu", 0, np.int64, [self._bound_rows],
                                     self._logit_row.ctypes.data)
        return self._binding

    def forget(self, seq_ids: set[int], blocks: set[int]) -> None:
        """Drops the mirror when another call writes one of `seq_ids` or a copy lands in one of
        `blocks` of the mirrored sequence."""
        if self.mirror.holds_any(seq_ids, blocks):
            self.mirror.invalidate()

    def close(self) -> None:
        self._binding = None
        self.session = None  # type: ignore[assignment]
        self.mirror.close()
