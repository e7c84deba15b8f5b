"""Session-scoped real server on the embedded model (started once, shared by the e2e tests)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from server_proc import ServerProc, running_server


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProc]:
    with running_server("--max-batch-size", "24", "--max-queue-size", "64",
                        log_name="main") as proc:
        yield proc
