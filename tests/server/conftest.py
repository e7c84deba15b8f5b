"""Fixtures: the real app over the real EngineLoop + Scheduler, with only the device, model and
tokenizer faked (tests/fakes.py's FakeEngine). TestClient as a context manager runs the lifespan.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from fakes import MODEL, FakeEngine
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import ServerSettings

MakeClient = Callable[..., TestClient]


def wait_ready(client: TestClient, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.01)


@pytest.fixture
def make_client() -> Iterator[MakeClient]:
    clients: list[TestClient] = []

    def make(engine: FakeEngine | None = None, **settings: object) -> TestClient:
        """The app with these settings over `engine` (default: FakeEngine(), which speaks
        fakes.REPLY); the engine stays reachable as `client.engine`."""
        engine = engine or FakeEngine()
        settings.setdefault("model", MODEL)
        app = create_app(ServerSettings(**settings), engine)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        client.engine = engine  # type: ignore[attr-defined]
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    return make_client()
