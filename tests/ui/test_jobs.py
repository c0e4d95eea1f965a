"""Dashboard jobs across sessions (issue 16, item 14): one registry per process, Stop from anywhere.

Two `AppTest` instances in one process are two browser sessions of one dashboard: the
second one is what a reloaded page or a second tab gets. Each test starts the real
bundled engine server from a real job process; every job is stopped before the test ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
import pytest
from streamlit.testing.v1 import AppTest

from checks.jobs import REGISTRY, Job, JobBusy, JobKind, JobState, new_job
from checks.load.benchmark import BenchmarkConfig
from checks.readiness.config import ChecklistConfig
from tests.ui.app_session import open_app

TIMEOUT_S = 120
RUN_DEADLINE_S = 240.0
TINY = {
    "target_threads": 1,
    "bench_input_len": 16,
    "bench_output_len": 4,
    "bench_concurrency": 2,
    "bench_requests": 500,
    "bench_warmup": 0,
}


@pytest.fixture(autouse=True)
def no_job_left_running() -> Iterator[None]:
    yield
    job = REGISTRY.running()
    if job is not None:
        job.cancel()
        job.wait(RUN_DEADLINE_S)


def _session(page: str) -> AppTest:
    return open_app(page, TIMEOUT_S)


def _engine_servers(job: Job) -> list[psutil.Process]:
    """The `engine serve` processes the job's child started (its children, found by command line)."""
    try:
        children = psutil.Process(job._process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if "serve" in p.cmdline() and "engine" in p.cmdline()]


def test_stop_while_the_bundled_server_starts_ends_the_job_at_once() -> None:
    job = REGISTRY.start(
        new_job(JobKind.BENCHMARK, BenchmarkConfig(target="bundled:int4", threads=1, requests=2, eager=True))
    )
    job.cancel()  # torch alone takes seconds to import: the server is not ready yet
    assert job.wait(60.0), "Stop was ignored while the bundled server started"
    snap = job.snapshot()
    assert snap.state == JobState.CANCELLED and snap.result is None, (snap.state, snap.error, snap.result)
    assert not _engine_servers(job)


def test_a_reloaded_page_sees_and_stops_the_running_job_and_a_second_one_is_refused() -> None:
    first = _session("app_pages/benchmark.py")
    for key, value in TINY.items():
        first.number_input(key=key).set_value(value)
    first.run()
    first.button(key="bench_run").click().run()
    assert not first.exception
    job = first.session_state["bench_job"]
    deadline = time.monotonic() + RUN_DEADLINE_S
    while time.monotonic() < deadline:
        snap = job.snapshot()
        if snap.state != JobState.RUNNING or (snap.progress is not None and snap.progress.completed >= 1):
            break
        time.sleep(0.5)
    assert job.snapshot().state == JobState.RUNNING, job.snapshot()

    reloaded = _session("app_pages/benchmark.py")  # a new session: what a reload or a second tab gets
    assert not reloaded.info, "the reloaded page asks for a run while one is running"
    assert reloaded.button(key="bench_run").disabled
    assert reloaded.session_state["bench_job"] is job

    other = _session("app_pages/checklist.py")
    assert other.button(key="check_run").disabled
    assert any("A benchmark is running" in i.value for i in other.info), [i.value for i in other.info]
    with pytest.raises(JobBusy, match=r"^a benchmark is already running .*: stop it or wait until it ends"):
        REGISTRY.start(new_job(JobKind.CHECKLIST, ChecklistConfig(target="bundled:int4", threads=1, eager=True)))

    reloaded.button(key="bench_stop").click().run()
    assert not reloaded.exception
    assert job.wait(RUN_DEADLINE_S)
    snap = job.snapshot()
    assert snap.state == JobState.CANCELLED and snap.result is not None, (snap.state, snap.error)
    assert snap.result.runs[0].summary.completed < 500
    reloaded.run()
    s = snap.result.runs[0].summary
    assert [w.value for w in reloaded.warning] == [
        f"Stopped: the figures cover the {s.completed + s.failed} requests that finished before the stop; "
        f"the {s.cancelled} in flight then were cancelled and are not counted."
    ]
    assert not reloaded.button(key="bench_run").disabled
    assert REGISTRY.running() is None
