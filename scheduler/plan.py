"""The one boundary between the scheduler and an executor: a step plan in, a step result out.

The scheduler decides *what* runs (which tokens of which sequences, where their KV lives); the
executor decides *how* (graph, device, memory). Neither sees the other's internals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class DeviceDraw:
    """How a device sampler chooses one row's token, with scheduler/sampling.py's arithmetic:
    the raw logits edited as `process_row` edits them (the repetition penalty over each distinct
    id of `history`, presence/frequency over its ids after `num_prompt`, then `bans` to -inf),
    then the argmax when `temperature` is 0, else the inverse-CDF draw at uniform `u` over
    exp((x - max) / temperature) cut by top_k, top_p (within top_k) and min_p."""

    temperature: float  # 0.0: greedy
    top_k: int
    top_p: float
    min_p: float
    u: float  # the request's one uniform for this token (0.0 for greedy rows)
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    history: Sequence[int] = ()  # prompt + output so far, only when a penalty is set: the
    # sequence's own list (READ-ONLY, not kept past execute(), as block_table)
    num_prompt: int = 0  # history[num_prompt:] is the output
    bans: tuple[int, ...] = ()  # distinct ids set to -inf after the penalties
    logprob: bool = False  # also the raw log-prob of the chosen token (StepResult.logprobs)


@dataclass(slots=True)
class ScheduledSeq:
    """One sequence's share of a step."""

    seq_id: int  # scheduler-wide id of the sequence (unique while it lives)
    token_ids: list[int]  # tokens to run now: a prefill chunk, or the single newest token
    start_pos: int  # position of token_ids[0] == number of this sequence's tokens already in KV
    block_table: list[int]  # physical KV block ids in order; covers start_pos + len(token_ids).
    # READ-ONLY: it is the sequence's own list (no per-step copy); the executor must not mutate
    # it, and must not keep it past execute() (the scheduler extends it in later steps)
    want_logits: bool  # logits of the LAST token of token_ids are needed (decode, or prompt done)
    # For an executor that samples on the device (`samples_on_device`), per want_logits row:
    host_logits: bool = True  # the host needs this row's full logits (sampled or penalised
    # rows, log-probs); False: its token is the argmax of the row with `banned` ids skipped
    banned: tuple[int, ...] = ()  # ids that argmax must skip (min_tokens end ids, bad words)
    draw: DeviceDraw | None = None  # set: the device chooses the token this way (not argmax)


@dataclass(slots=True)
class StepPlan:
    """Everything an executor needs for one forward pass over the running batch."""

    step_id: int  # monotonically increasing step counter
    seqs: list[ScheduledSeq]  # rows in this order; prefill chunks and decodes mixed freely
    block_copies: list[tuple[int, int]] = field(default_factory=list)  # (src, dst) KV block
    # copies the executor performs BEFORE running the graph (copy-on-write of shared blocks)

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.seqs)

    @property
    def num_logit_rows(self) -> int:
        return sum(1 for s in self.seqs if s.want_logits)


@dataclass(slots=True)
class StepResult:
    """What an executor returns for a plan."""

    step_id: int  # the plan's step_id
    logits: np.ndarray  # float32 [num_logit_rows, vocab]: one row per want_logits seq, plan order
    argmax: np.ndarray | None = None  # int64 [num_logit_rows]: argmax of each logits row, when
    # the executor computes it (in the graph / on the device); lets plain-greedy rows skip a host
    # pass over the logits. None -> the scheduler computes it.
    logits_rows: np.ndarray | None = None  # int64 [k]: set by an executor that samples on the
    # device: `logits` then holds only these logit rows (the plan's `host_logits` rows, indices
    # into the want_logits rows) and `argmax` skips each row's `banned` ids, or holds the token
    # its `draw` chose. None: every row.
    logprobs: np.ndarray | None = None  # float64 [num_logit_rows]: a device sampler's raw
    # log-prob of each chosen token, for rows whose draw asked (others NaN); None when none did


class StepRefusedError(ValueError):
    """The executor cannot run this plan (it exceeds a limit the executor was built with, or
    names blocks outside its pool) and touched nothing: only the plan's requests fail, the
    engine goes on. Any other exception from `execute` is a device fault and stops the engine."""


class Executor(Protocol):
    """Runs step plans over a paged KV pool that it owns. Implemented in `engine/`."""

    @property
    def block_size(self) -> int: ...  # tokens per KV block

    @property
    def num_blocks(self) -> int: ...  # KV blocks in the pool; valid ids are 0..num_blocks-1

    @property
    def vocab_size(self) -> int: ...  # logits width

    @property
    def max_context(self) -> int: ...  # longest sequence (prompt + output) the model supports

    # An executor built for a largest step may also expose `max_batch_size` / `max_num_tokens`
    # (ints); the scheduler then never plans beyond them (scheduler.config.fit_to_executor).
    # One exposing `samples_on_device = True` gets plans whose rows say which logits the host
    # needs (`host_logits`, `banned`, `draw`) and returns `StepResult.logits_rows` (and
    # `logprobs` when a draw asks for them).

    def execute(self, plan: StepPlan) -> StepResult: ...  # blocking; thread-safe w.r.t. itself
    # raises StepRefusedError for a plan it cannot run (nothing done), anything else on a fault

    def close(self) -> None: ...  # releases pool and device memory; idempotent
