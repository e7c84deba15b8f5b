"""A request's live state inside the scheduler: tokens, KV block table, counters and status.

Only `append_token` adds tokens; everything derived is a property, except a few per-request
constants fixed at construction for the per-step hot path (`stop_ids`, `length_limit`,
`plain_greedy_from`). Only Admission (`_admit`, `_preempt`) and the Scheduler (`_finish`)
change `status`; only BlockTables (block_tables.py) edits `block_table` (and `num_hit_blocks`).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Sequence as Sequence_

import numpy as np

from scheduler.logits_processors import is_greedy, needs_processing
from scheduler.request import ErrorKind, FinishReason, Request, SamplingParams, TopLogprobs


class SeqStatus(enum.IntEnum):
    """Ordered: everything >= FINISHED_END_ID is final."""

    WAITING = 0  # queued, never admitted (no KV)
    RUNNING = 1  # holds KV blocks; prefilling or decoding
    PREEMPTED = 2  # admitted once, KV dropped (recompute); back at the front of the queue
    FINISHED_END_ID = 3
    FINISHED_LENGTH = 5
    FINISHED_ABORTED = 6
    FINISHED_ERROR = 7

    @property
    def is_finished(self) -> bool:
        return self >= SeqStatus.FINISHED_END_ID


FINISH_REASONS: dict[SeqStatus, FinishReason] = {
    SeqStatus.FINISHED_END_ID: FinishReason.END_ID,
    SeqStatus.FINISHED_LENGTH: FinishReason.LENGTH,
    SeqStatus.FINISHED_ABORTED: FinishReason.ABORT,
    SeqStatus.FINISHED_ERROR: FinishReason.ERROR,
}


class Sequence:
    """One request being generated. Token ids are prompt followed by output."""

    __slots__ = (
        "seq_id",
        "request",
        "_token_ids",
        "num_prompt_tokens",
        "output_logprobs",
        "output_top_logprobs",
        "block_table",
        "block_hashes",
        "num_registered_blocks",
        "num_computed_tokens",
        "num_cached_tokens",
        "status",
        "admitted_once",
        "rng",
        "num_reported_tokens",
        "error",
        "error_type",
        "num_hit_blocks",
        "end_ids",
        "stop_ids",
        "length_limit",
        "plain_greedy_from",
    )

    def __init__(self, seq_id: int, request: Request, rng: np.random.Generator | None,
                 eos_token_ids: tuple[int, ...] = (), max_model_len: int | None = None) -> None:
        params = request.params
        self.seq_id = seq_id  # scheduler-wide unique id
        self.request = request
        self._token_ids: list[int] = list(request.prompt_token_ids)  # prompt + output
        self.num_prompt_tokens = len(request.prompt_token_ids)
        self.output_logprobs: list[float] = []  # log-prob per output token (when requested)
        self.output_top_logprobs: list[TopLogprobs] = []  # per output token (top_logprobs > 0)
        self.block_table: list[int] = []  # physical KV blocks, in order (KV manager only)
        self.block_hashes: list[int] = []  # chained hashes of the full blocks of _token_ids
        self.num_registered_blocks = 0  # leading table blocks already offered to the cache
        self.num_computed_tokens = 0  # tokens whose KV is in the pool (or scheduled into it)
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache at first admit
        self.status = SeqStatus.WAITING
        self.admitted_once = False  # got KV at least once (queue deadline no longer applies)
        self.rng = rng  # per-request generator: exactly one uniform per sampled token
        self.num_reported_tokens = 0  # output tokens already sent in a RequestOutput
        self.error: str | None = None
        self.error_type: ErrorKind | None = None
        self.num_hit_blocks = 0  # leading table blocks that came from a prefix-cache hit
        # ---- per-request constants for the hot path ----
        self.end_ids: tuple[int, ...] = params.end_ids or tuple(eos_token_ids)  # effective
        self.stop_ids: tuple[int, ...] = () if params.ignore_eos else self.end_ids  # may finish
        limit = self.num_prompt_tokens + params.max_tokens
        self.length_limit = limit if max_model_len is None else min(limit, max_model_len)
        # token count from which a row is plain greedy (argmax of the raw logits is the answer:
        # temperature 0, no penalties/bans, min_tokens reached); maxsize -> never
        static_plain = is_greedy(params) and not needs_processing(params, params.min_tokens)
        self.plain_greedy_from = (self.num_prompt_tokens + params.min_tokens if static_plain
                                  else sys.maxsize)

    # ---- the one mutator of the token list ----------
    def append_token(self, token_id: int, logprob: float | None) -> int:
        """Append one output token; returns the new number of tokens."""
        self._token_ids.append(token_id)
        if logprob is not None:
            self.output_logprobs.append(logprob)
        return len(self._token_ids)

    # ---- derived values ----------
    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def token_ids(self) -> tuple[int, ...]:
        return tuple(self._token_ids)

    @property
    def token_view(self) -> Sequence_[int]:
        """Prompt + output without copying (read-only by contract)."""
        return self._token_ids

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.request.prompt_token_ids

    @property
    def output_token_ids(self) -> list[int]:
        return self._token_ids[self.num_prompt_tokens :]

    def tokens_slice(self, start: int, stop: int | None = None) -> list[int]:
        return self._token_ids[start:stop]

    @property
    def num_tokens(self) -> int:
        return len(self._token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self._token_ids) - self.num_prompt_tokens

    @property
    def last_token_id(self) -> int:
        return self._token_ids[-1]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self._token_ids) - self.num_computed_tokens

    @property
    def max_kv_tokens(self) -> int:
        """Tokens that ever need KV: the last sampled token is never fed back."""
        return self.num_prompt_tokens + self.params.max_tokens - 1

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def finish_reason(self) -> FinishReason | None:
        return FINISH_REASONS.get(self.status)

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, req={self.request_id!r}, status={self.status.name}, "
            f"tokens={self.num_tokens}, computed={self.num_computed_tokens}, "
            f"blocks={self.block_table})"
        )
