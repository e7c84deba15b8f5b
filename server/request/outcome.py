"""How a generation request ended, and what each ending means, in one table: the HTTP status
the client gets (errors.py writes it as Triton's or OpenAI's error shape from that status) and
the `reason` of Triton's `nv_inference_request_failure` counter (None: a success).

`Generation` (generation.py) picks the outcome: from the final output's finish reason and
`ErrorKind`, from what aborted it (its timeout, the client, the drain), or from what refused its
admission; nothing else decides it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from scheduler.request import ErrorKind


class Outcome(enum.StrEnum):
    FINISHED = "finished"  # stop, length or end id
    QUEUE_FULL = "queue_full"  # refused: as many requests as the server takes are in flight
    QUEUE_TIMEOUT = "queue_timeout"  # its deadline passed before it produced a token
    TIMEOUT = "timeout"  # --request-timeout passed after it produced a token
    INVALID = "invalid"  # the engine refused its parameters or prompt
    ENGINE_DEAD = "engine_dead"  # refused: the engine has died or is stopping
    ENGINE_FAILED = "engine_failed"  # the engine failed while it ran
    SHUTDOWN = "shutdown"  # aborted by the drain at shutdown (or engine death)
    ABORTED = "aborted"  # aborted by the server otherwise (e.g. the engine stopped)
    CLIENT_GONE = "client_gone"  # the client went away first: aborted, nobody to answer
    INTERNAL = "internal"  # a bug on the server's side while serving it


@dataclass(frozen=True, slots=True)
class Ending:
    status: int  # HTTP status of the answer (200: the outputs)
    failure_reason: str | None  # Triton's failure counter reason; None for a success
    message: str  # the client's error message when the engine gave none


ENDINGS: dict[Outcome, Ending] = {
    Outcome.FINISHED: Ending(200, None, ""),
    Outcome.QUEUE_FULL: Ending(503, "REJECTED", "Exceeds maximum queue size"),
    Outcome.QUEUE_TIMEOUT: Ending(503, "REJECTED", "request timeout expired while queued"),
    Outcome.TIMEOUT: Ending(503, "OTHER", "request timeout expired"),
    Outcome.INVALID: Ending(400, "OTHER", "invalid request"),
    Outcome.ENGINE_DEAD: Ending(503, "REJECTED", "engine is dead"),
    Outcome.ENGINE_FAILED: Ending(500, "BACKEND", "engine error"),
    Outcome.SHUTDOWN: Ending(503, "CANCELED", "server shutting down"),
    Outcome.ABORTED: Ending(503, "CANCELED", "the request was aborted by the server"),
    Outcome.CLIENT_GONE: Ending(499, "CANCELED", "the client closed the connection"),
    Outcome.INTERNAL: Ending(500, "OTHER", "internal error"),
}

_FROM_KIND = {
    ErrorKind.QUEUE_TIMEOUT: Outcome.QUEUE_TIMEOUT,
    ErrorKind.QUEUE_FULL: Outcome.QUEUE_FULL,
    ErrorKind.INVALID: Outcome.INVALID,
    ErrorKind.ENGINE_DEAD: Outcome.ENGINE_DEAD,
}


def error_outcome(kind: ErrorKind | None) -> Outcome:
    """The outcome of a final ERROR output or a refused add (scheduler.request.error_kind);
    a refused step or an engine failure is ENGINE_FAILED."""
    if kind is None:
        return Outcome.ENGINE_FAILED
    return _FROM_KIND.get(kind, Outcome.ENGINE_FAILED)
