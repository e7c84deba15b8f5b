"""Fixtures shared by the engine tests that build the real SmolLM2 graphs."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One graph cache for the session, so the SmolLM2 graphs are built once."""
    return tmp_path_factory.mktemp("trtserve-cache")
