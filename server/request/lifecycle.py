"""Server phases: loading -> ready -> draining (SIGTERM) | dead (engine loop died).

Readiness is 503 unless READY; liveness is 200 unless DEAD. New generation requests are admitted
only when READY. The drain waits for the live requests (live.py), then aborts the rest. DEAD is
set by the engine loop's death callback (app.py) or a failed load, never by polling.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

from server.errors import UnavailableError
from server.request.live import LiveRequests
from server.serving import ServingModel

logger = logging.getLogger(__name__)


class Phase(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    DEAD = "dead"


class Lifecycle:
    def __init__(self, requests: LiveRequests) -> None:
        self.phase = Phase.LOADING
        self.model: ServingModel | None = None
        self.failure: str | None = None  # why the server is dead
        self.exit_code = 0
        self.requests = requests
        self.on_exit: Callable[[int], None] | None = None  # asks the runner to stop
        # with --api-server-count: readiness also waits for every other front end
        self.ready_gate: Callable[[], bool] | None = None

    # ---- state -------------------------------------------------------------------------
    def set_ready(self, model: ServingModel) -> None:
        self.model = model
        if self.phase is Phase.LOADING:
            self.phase = Phase.READY
            logger.info("model %s ready (backend %s)", model.name, model.backend)

    def set_dead(self, reason: str) -> None:
        if self.phase is Phase.DEAD:
            return
        logger.error("engine dead: %s", reason)
        self.phase = Phase.DEAD
        self.failure = reason
        self.exit_code = 1
        if self.on_exit is not None:
            self.on_exit(1)

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY and (self.ready_gate is None or self.ready_gate())

    @property
    def live(self) -> bool:
        return self.phase is not Phase.DEAD

    def admission_error(self) -> UnavailableError | None:
        if self.phase is Phase.READY:
            return None
        if self.phase is Phase.LOADING:
            return UnavailableError("Server not ready: the model is still loading")
        if self.phase is Phase.DRAINING:
            return UnavailableError("Server exiting")
        return UnavailableError(f"engine is dead: {self.failure}")

    # ---- drain -------------------------------------------------------------------------
    async def drain(self, timeout: float) -> None:
        """Stop admitting, let live requests finish for `timeout` s, abort the rest."""
        if self.phase is Phase.READY or self.phase is Phase.LOADING:
            self.phase = Phase.DRAINING
        logger.info("draining %d in-flight requests (timeout %.1fs)", len(self.requests), timeout)
        if await self.requests.wait_idle(timeout):
            return
        self.requests.abort_all("server shutting down: drain timeout expired")
        if not await self.requests.wait_idle(2.0):
            logger.warning("%d requests still active after abort", len(self.requests))
