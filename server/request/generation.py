"""One generation request from admission to its last delta: admission checks, timeout, abort on
client disconnect or shutdown, and the metrics record.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

from scheduler.request import (
    EngineDeadError,
    FinishReason,
    QueueFullError,
    QueueTimeoutError,
    Request,
    RequestError,
    RequestOutput,
    SamplingParams,
)
from server.errors import ApiError, UnavailableError, ValidationError, to_api_error
from server.request.lifecycle import Lifecycle
from server.metrics.server_metrics import RequestRecord, ServerMetrics
from server.request.log import log_finished
from server.serving import RequestStreamLike, ServingModel

logger = logging.getLogger(__name__)

# final ERROR outputs that mean 503: a queue timeout, or an add refused by the engine process
UNAVAILABLE_ERRORS = frozenset(e.__name__ for e in (QueueTimeoutError, QueueFullError,
                                                    EngineDeadError))


class EngineFailedError(ApiError):
    """The engine failed while this request was in flight (Triton: INTERNAL -> 500)."""

    status = 500


class Generation:
    """A live request; iterate `outputs()` once. Aborts itself if the consumer stops early."""

    def __init__(self, service: GenerationService, request: Request, stream: RequestStreamLike,
                 label: str) -> None:
        self.request = request
        self.request_id = request.request_id
        self._service = service
        self._stream = stream
        self._label = label
        self._done = False
        self._closed = False
        self._expired = False  # the request timeout fired
        self._first_token_at: float | None = None
        self._last_token_at: float | None = None
        self._gaps: list[float] = []
        self.num_prompt_tokens = len(request.prompt_token_ids)
        self.num_output_tokens = 0
        self.num_cached_tokens = 0
        self.finish_reason: FinishReason | None = None

    def abort(self) -> None:
        if not self._done:
            logger.info("[%s] abort", self.request_id)
            self._stream.abort()

    def _observe(self, out: RequestOutput) -> None:
        now = time.monotonic()
        if out.new_token_ids:
            if self._first_token_at is None:
                self._first_token_at = now
            elif self._last_token_at is not None:
                self._gaps.append((now - self._last_token_at) / len(out.new_token_ids))
            self._last_token_at = now
        self.num_prompt_tokens = out.num_prompt_tokens or self.num_prompt_tokens
        self.num_output_tokens = out.num_output_tokens
        self.num_cached_tokens = out.num_cached_tokens

    def _final_error(self, out: RequestOutput) -> ApiError | None:
        if out.finish_reason is FinishReason.ERROR:
            msg = out.error or "engine error"
            if out.error_type in UNAVAILABLE_ERRORS:
                return UnavailableError(msg)
            if out.error_type == RequestError.__name__:  # an add the engine process refused
                return ValidationError(msg)
            return EngineFailedError(msg)
        if out.finish_reason is FinishReason.ABORT and self._service.lifecycle.shutdown_reason:
            return UnavailableError(self._service.lifecycle.shutdown_reason)
        return None

    def _expire(self) -> None:
        """The request's deadline passed: abort it; its final (ABORT) output ends outputs()."""
        self._expired = True
        self.abort()

    def _start_timer(self) -> asyncio.TimerHandle | None:
        """One timer per request (not a wait_for, i.e. a task, per streamed delta)."""
        timeout = self._service.request_timeout
        if timeout <= 0:
            return None
        delay = self.request.arrival_time + timeout - time.monotonic()
        return asyncio.get_running_loop().call_later(max(delay, 0.0), self._expire)

    async def outputs(self) -> AsyncIterator[RequestOutput]:
        """Deltas in order; the last one has `finished`. Raises ApiError on failure/timeout."""
        it = aiter(self._stream)
        failure: str | None = "CANCELED"
        timer = self._start_timer()
        try:
            while True:
                try:
                    out = await anext(it)
                except StopAsyncIteration:
                    failure = "OTHER"
                    raise EngineFailedError(
                        "the engine ended the request without a result") from None
                self._observe(out)
                if out.finished:
                    self.finish_reason = out.finish_reason
                    self._done = True
                    if self._expired and out.finish_reason is FinishReason.ABORT:
                        failure = "REJECTED" if self._first_token_at is None else "OTHER"
                        raise UnavailableError("request timeout: not finished within "
                                               f"{self._service.request_timeout:g} s")
                    err = self._final_error(out)
                    if err is not None:
                        failure = "BACKEND" if err.status == 500 else "CANCELED"
                        raise err
                    failure = None
                yield out
                if out.finished:
                    return
        finally:
            if timer is not None:
                timer.cancel()
            self.close(failure)

    def stopped(self, last: RequestOutput) -> None:
        """The output text reached a stop string (server/request/text.py): `last` is the delta
        it ends with. A success, recorded as one; the engine stops generating the request."""
        self.num_output_tokens = last.num_output_tokens
        self.finish_reason = FinishReason.STOP
        self.close(None)

    def close(self, failure: str | None = "CANCELED") -> None:
        """Abort if still running and record the outcome; idempotent (call it in a finally)."""
        if self._closed:
            return
        self._closed = True
        self.abort()
        self._done = True
        self._service.finish(self, failure)

    def record(self, failure: str | None) -> RequestRecord:
        now = time.monotonic()
        arrival = self.request.arrival_time
        ttft = None if self._first_token_at is None else self._first_token_at - arrival
        queue_s = ttft if ttft is not None else now - arrival
        return RequestRecord(
            model=self._label, ok=failure is None, failure_reason=failure, queue_s=queue_s,
            ttft_s=ttft, e2e_s=now - arrival, compute_s=max(0.0, now - arrival - queue_s),
            num_input_tokens=self.num_prompt_tokens, num_output_tokens=self.num_output_tokens,
            inter_token_s=self._gaps)


class GenerationService:
    """Admits requests into the engine loop; the single place requests are counted."""

    def __init__(self, lifecycle: Lifecycle, metrics: ServerMetrics,
                 request_timeout: float, request_id_prefix: str = "") -> None:
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.request_timeout = request_timeout
        self.request_id_prefix = request_id_prefix  # the front end's, with --api-server-count

    def admit(self, label: str) -> ServingModel:
        """Cheap checks before any tokenization: phase and capacity (RELIABILITY §7.18)."""
        err = self.lifecycle.admission_error()
        if err is not None or self.lifecycle.model is None:
            raise err or UnavailableError("Server not ready")
        model = self.lifecycle.model
        if model.loop.dead is not None:
            self.lifecycle.set_dead(str(model.loop.dead))
            raise UnavailableError(f"engine is dead: {model.loop.dead}")
        capacity = model.max_batch_size + model.max_queue_size
        if model.max_queue_size > 0 and model.loop.num_unfinished >= capacity:
            self.metrics.request_started(label)
            self._rejected(label, 0, time.monotonic())
            raise UnavailableError("Exceeds maximum queue size")
        return model

    def _rejected(self, label: str, num_prompt_tokens: int, arrival: float,
                  reason: str = "REJECTED") -> None:
        self.metrics.request_finished(RequestRecord(
            model=label, ok=False, failure_reason=reason, queue_s=0.0, ttft_s=None,
            e2e_s=time.monotonic() - arrival, compute_s=0.0,
            num_input_tokens=num_prompt_tokens, num_output_tokens=0))

    def submit(self, model: ServingModel, prompt_ids: list[int], params: SamplingParams,
               label: str, arrival: float) -> Generation:
        prefix = self.request_id_prefix  # 32 hex digits either way
        request_id = prefix + uuid.uuid4().hex[len(prefix):]
        timeout = self.request_timeout
        request = Request(request_id=request_id, prompt_token_ids=prompt_ids, params=params,
                          arrival_time=arrival,
                          queue_deadline=arrival + timeout if timeout > 0 else None)
        self.metrics.request_started(label)
        try:
            stream = model.loop.add(request)
        except Exception as exc:  # noqa: BLE001 - mapped by the taxonomy
            err = to_api_error(exc)
            reason = "REJECTED" if err.status == 503 else "OTHER"
            self._rejected(label, len(prompt_ids), arrival, reason)
            logger.info("[%s] rejected (%d): %s", request_id, err.status, err.message)
            raise err from None
        gen = Generation(self, request, stream, label)
        self.lifecycle.track(request_id, gen.abort)
        logger.debug("[%s] admitted: %d prompt tokens", request_id, len(prompt_ids))
        return gen

    def finish(self, gen: Generation, failure: str | None) -> None:
        self.lifecycle.untrack(gen.request_id)
        record = gen.record(failure)
        self.metrics.request_finished(record)
        log_finished(gen.request_id, record.model, record.num_input_tokens,
                     record.num_output_tokens, record.ttft_s, record.e2e_s,
                     failure or str(gen.finish_reason or "-"))
