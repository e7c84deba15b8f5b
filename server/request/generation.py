"""One generation request from admission to its end, and the one thing that ends it.

`GenerationService.submit` admits a request into the engine loop and the registry of live
requests; the route then holds the returned `Generation` in `async with`, which is the only place
a request is closed: on the way out it aborts the request if it is still running, takes it out of
the registry and records its outcome (outcome.py) in the metrics and the request log, once,
whatever ended it (its last output, the client going away, its timeout, the drain, engine death).
A streamed answer hands the request on (`hand_on`) to the response that streams it, which holds
it in `async with` again until the last byte.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from types import TracebackType

from starlette.requests import ClientDisconnect

from scheduler.request import FinishReason, Request, RequestOutput, SamplingParams, error_kind
from server.errors import ApiError, UnavailableError, to_api_error
from server.metrics.server_metrics import RequestRecord, ServerMetrics
from server.request.lifecycle import Lifecycle
from server.request.live import LiveRequests
from server.request.log import log_finished
from server.request.outcome import ENDINGS, Outcome, error_outcome
from server.serving import RequestStreamLike, ServingModel

logger = logging.getLogger(__name__)

# what ends an `async with` when the client went away (the streamed response's send failed,
# or the task serving it was cancelled)
_CLIENT_GONE = (asyncio.CancelledError, OSError, ClientDisconnect)


class Generation:
    """A live request: `async with` it, iterate `outputs()` once."""

    def __init__(self, request: Request, stream: RequestStreamLike, label: str, timeout: float,
                 registry: LiveRequests, on_end: Callable[[Generation], None]) -> None:
        self.request = request
        self.request_id = request.request_id
        self.label = label
        self._stream = stream
        self._timeout = timeout  # --request-timeout (0: none)
        self._registry = registry  # says why it was aborted when the drain aborted it
        self._on_end = on_end  # records the outcome, once
        self._done = False  # the final output arrived
        self._abort_sent = False
        self._ended = False
        self._handed_on = False
        self._expired = False  # the request timeout fired
        self._disconnected = False
        self.outcome: Outcome | None = None
        self._message = ""  # the error message of a failed outcome
        self._timer = self._start_timer()
        self._first_token_at: float | None = None
        self._last_token_at: float | None = None
        self._gaps: list[float] = []
        self.num_prompt_tokens = len(request.prompt_token_ids)
        self.num_output_tokens = 0
        self.num_cached_tokens = 0
        self.finish_reason: FinishReason | None = None

    # ---- ownership -----------------------------------------------------------------------
    async def __aenter__(self) -> Generation:
        self._handed_on = False
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc is None and self._handed_on:
            return
        self._end(exc)

    def hand_on(self) -> Generation:
        """Leave this `async with` without ending the request: the next holder ends it."""
        self._handed_on = True
        return self

    def abort(self) -> None:
        """Ask the engine to stop it (once); its final (ABORT) output then ends `outputs()`."""
        if not self._done and not self._abort_sent:
            self._abort_sent = True
            logger.info("[%s] abort", self.request_id)
            self._stream.abort()

    def disconnected(self) -> None:
        """The client went away (the disconnect watcher): abort, nobody is answered."""
        self._disconnected = True
        self.abort()

    def _expire(self) -> None:
        self._expired = True
        self.abort()

    def _start_timer(self) -> asyncio.TimerHandle | None:
        """One timer per request (not a wait_for, i.e. a task, per streamed delta)."""
        if self._timeout <= 0:
            return None
        delay = self.request.arrival_time + self._timeout - time.monotonic()
        return asyncio.get_running_loop().call_later(max(delay, 0.0), self._expire)

    def _end(self, exc: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        if self._timer is not None:
            self._timer.cancel()
        if self.outcome is None:
            gone = self._disconnected or exc is None or isinstance(exc, _CLIENT_GONE)
            self.outcome = Outcome.CLIENT_GONE if gone else Outcome.INTERNAL
        self.abort()
        self._done = True
        self._registry.remove(self)
        self._on_end(self)

    # ---- outputs -------------------------------------------------------------------------
    async def outputs(self) -> AsyncIterator[RequestOutput]:
        """Deltas in order; the last one has `finished`. Raises ApiError when the request
        failed (its outcome's status and message)."""
        async for out in self._stream:
            self._observe(out)
            if out.finished:
                self._done, self.finish_reason = True, out.finish_reason
                self.outcome, self._message = self._final_outcome(out)
                if self.outcome is not Outcome.FINISHED:
                    raise self.error()
            yield out
            if out.finished:
                return
        self.outcome = Outcome.INTERNAL
        self._message = "the engine ended the request without a result"
        raise self.error()

    def error(self) -> ApiError:
        """The client's error for a failed outcome."""
        ending = ENDINGS[self.outcome or Outcome.INTERNAL]
        return ApiError(self._message or ending.message, ending.status)

    def _final_outcome(self, out: RequestOutput) -> tuple[Outcome, str]:
        if out.finish_reason is FinishReason.ERROR:
            return error_outcome(out.error_type), out.error or ""
        if out.finish_reason is not FinishReason.ABORT:
            return Outcome.FINISHED, ""
        if self._expired:
            late = Outcome.QUEUE_TIMEOUT if self._first_token_at is None else Outcome.TIMEOUT
            return late, f"request timeout: not finished within {self._timeout:g} s"
        if self._disconnected:
            return Outcome.CLIENT_GONE, ""
        reason = self._registry.abort_reason
        return (Outcome.SHUTDOWN, reason) if reason else (Outcome.ABORTED, "")

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

    def stopped(self, last: RequestOutput) -> None:
        """The output text reached a stop string (server/request/text.py); `last` is the delta
        it ends with. A success: the engine stops generating it, the owner records FINISHED."""
        self.num_output_tokens = last.num_output_tokens
        self.finish_reason = FinishReason.STOP
        self.outcome = Outcome.FINISHED
        self.abort()
        self._done = True

    def record(self) -> RequestRecord:
        now = time.monotonic()
        arrival = self.request.arrival_time
        ttft = None if self._first_token_at is None else self._first_token_at - arrival
        queue_s = ttft if ttft is not None else now - arrival
        reason = ENDINGS[self.outcome or Outcome.INTERNAL].failure_reason
        return RequestRecord(
            model=self.label, ok=self.outcome is Outcome.FINISHED, failure_reason=reason,
            queue_s=queue_s, ttft_s=ttft, e2e_s=now - arrival,
            compute_s=max(0.0, now - arrival - queue_s), num_input_tokens=self.num_prompt_tokens,
            num_output_tokens=self.num_output_tokens, inter_token_s=self._gaps)


class GenerationService:
    """Admits requests into the engine loop and records how each ended."""

    def __init__(self, lifecycle: Lifecycle, metrics: ServerMetrics,
                 request_timeout: float, request_id_prefix: str = "") -> None:
        self.lifecycle = lifecycle
        self.requests: LiveRequests = lifecycle.requests
        self.metrics = metrics
        self.request_timeout = request_timeout
        self.request_id_prefix = request_id_prefix  # the front end's, with --api-server-count

    def admit(self, label: str) -> ServingModel:
        """Cheap checks before any tokenization: phase and capacity (RELIABILITY §7.18)."""
        err = self.lifecycle.admission_error()
        if err is not None or self.lifecycle.model is None:
            raise err or UnavailableError("Server not ready")
        model = self.lifecycle.model
        capacity = model.max_batch_size + model.max_queue_size
        if model.max_queue_size > 0 and model.loop.num_unfinished >= capacity:
            self._refused(label, Outcome.QUEUE_FULL, 0, time.monotonic())
            raise UnavailableError(ENDINGS[Outcome.QUEUE_FULL].message)
        return model

    def submit(self, model: ServingModel, prompt_ids: list[int], params: SamplingParams,
               label: str, arrival: float) -> Generation:
        """The request, admitted into the engine loop and the registry: `async with` it."""
        prefix = self.request_id_prefix  # 32 hex digits either way
        request_id = prefix + uuid.uuid4().hex[len(prefix):]
        timeout = self.request_timeout
        request = Request(request_id=request_id, prompt_token_ids=prompt_ids, params=params,
                          arrival_time=arrival,
                          queue_deadline=arrival + timeout if timeout > 0 else None)
        try:
            stream = model.loop.add(request)
        except Exception as exc:  # noqa: BLE001 - mapped by the taxonomy
            err = to_api_error(exc)
            self._refused(label, error_outcome(error_kind(exc)), len(prompt_ids), arrival)
            logger.info("[%s] rejected (%d): %s", request_id, err.status, err.message)
            raise err from None
        gen = Generation(request, stream, label, timeout, self.requests, self._finished)
        self.requests.add(gen)
        logger.debug("[%s] admitted: %d prompt tokens", request_id, len(prompt_ids))
        return gen

    def _refused(self, label: str, outcome: Outcome, num_prompt_tokens: int,
                 arrival: float) -> None:
        self.metrics.request_finished(RequestRecord(
            model=label, ok=False, failure_reason=ENDINGS[outcome].failure_reason, queue_s=0.0,
            ttft_s=None, e2e_s=time.monotonic() - arrival, compute_s=0.0,
            num_input_tokens=num_prompt_tokens, num_output_tokens=0))

    def _finished(self, gen: Generation) -> None:
        """Called once per request, by its Generation when it ends."""
        record = gen.record()
        self.metrics.request_finished(record)
        log_finished(gen.request_id, record.model, record.num_input_tokens,
                     record.num_output_tokens, record.ttft_s, record.e2e_s,
                     record.failure_reason or str(gen.finish_reason))
