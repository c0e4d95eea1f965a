"""Shared fixtures: every test runs with Preflight's home in its own tmp dir.

The converted-weights cache is the exception: one tmp dir for the whole session,
so the model is converted from GGUF once and later loads hit the warm cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def weights_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("preflight-cache")


@pytest.fixture(autouse=True)
def preflight_env(tmp_path: Path, weights_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "preflight-home"
    home.mkdir()
    monkeypatch.setenv("PREFLIGHT_HOME", str(home))
    monkeypatch.setenv("PREFLIGHT_CACHE_DIR", str(weights_cache_dir))
    return home
