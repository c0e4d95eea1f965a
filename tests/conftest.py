"""Shared fixtures: every test runs with Preflight's home in its own tmp dir.

The bundled int4 engine is shared by the whole session (`int4`). The converted-weights
cache is the exception to the per-test home: one tmp dir for the whole session,
set before any fixture of any scope runs (module-scoped engines included), so
the model is converted from GGUF once per format and later loads hit the warm
cache, and nothing is written to the user's real cache.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs two workers), each worker and the servers it starts get an
    equal share of the cores as their torch threads: two workers each spinning one OpenMP thread per core
    made every engine test about 40% slower than alone. Runs before any test module imports torch; an
    OMP_NUM_THREADS already set wins."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        share = max(1, len(os.sched_getaffinity(0)) // int(workers))
        os.environ.setdefault("OMP_NUM_THREADS", str(share))


@pytest.fixture(scope="session", autouse=True)
def weights_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("preflight-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFLIGHT_CACHE_DIR", str(path))
        yield path


_ALLOWED_PACKAGES: set[str] = set()  # compiled decode packages built by tests marked compiled_build


@pytest.fixture(autouse=True)
def no_compiled_build_outside_the_compile_tests(
    request: pytest.FixtureRequest, weights_cache_dir: Path
) -> Iterator[None]:
    """Compiled decode is the engine's default, and this session's cache starts empty: a test that starts
    `serve`, `generate`, the bundled target or the Engine page without --eager (eager=True) builds a
    package, about a minute per step kind. Only tests marked `compiled_build` may; any other fails here
    (a build in a module-scoped fixture too: it is caught at the first test's end)."""
    yield
    names = {p.name for p in (weights_cache_dir / "engine" / "aot").glob("*.pt2")}
    built = sorted(names - _ALLOWED_PACKAGES)
    _ALLOWED_PACKAGES.update(built)  # each is reported once
    if request.node.get_closest_marker("compiled_build") is None:
        assert not built, f"built compiled decode packages {built}: start the engine eager in this test"


@pytest.fixture(scope="session")
def int4(weights_cache_dir: Path):  # noqa: ANN201 - the engine type would import torch at collection
    """The bundled engine in int4 on the CPU, loaded once for the whole session: the engine's own tests
    and the planner's predicted-vs-measured tests share it (each generation starts from a fresh cache)."""
    from engine.run.runtime import Engine, LoadOptions

    return Engine.load(LoadOptions(quant="int4", device="cpu"))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module: two spinning OpenMP threads on a shared 2-core machine make each step
    many times slower (the compression tests' matmuls over captured activations)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def preflight_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "preflight-home"
    home.mkdir()
    monkeypatch.setenv("PREFLIGHT_HOME", str(home))
    return home
