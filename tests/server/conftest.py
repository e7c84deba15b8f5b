"""Fixtures: the app over a fake engine (TestClient as a context manager runs the lifespan)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from server_fakes import FakeLoop, fake_model, loader_for

from server.app import Loader, create_app
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

    def make(loop: FakeLoop | None = None, loader: Loader | None = None,
             **settings: object) -> TestClient:
        """The app over a FakeLoop, or over what `loader` loads (e.g. real_engine.py)."""
        model = fake_model(loop)
        settings.setdefault("model", "fake-model")
        app = create_app(ServerSettings(**settings), loader or loader_for(model))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        client.fake_loop = model.loop  # type: ignore[attr-defined]
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    return make_client()
