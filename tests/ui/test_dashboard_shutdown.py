"""A bundled server never outlives what started it (issue 16, item 13).

The real dashboard (`streamlit run app.py`, driven by Playwright in headless Chromium)
starts a bundled benchmark; the dashboard is then killed with SIGTERM (how systemd, Docker
and Kubernetes stop it) or SIGKILL (the OOM killer). Every process it started must end and
no temp folder may be left. Separately, a process that started a `BundledTarget` is
SIGKILLed: the server notices its parent is gone and stops. Processes are found through
an environment marker that only this test's processes carry.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import expect, sync_playwright

from checks.load.targets import free_port, wait_healthy
from tests.ui.test_browser import CHROMIUM, CHROMIUM_ARGS, SIDEBAR_EAGER, tick_eager

ROOT = Path(__file__).resolve().parents[2]
MARK = "PREFLIGHT_TEST_MARK"
START_DEADLINE_S = 60
RUN_DEADLINE_MS = 240_000
GONE_DEADLINE_S = 120.0  # a hang detector: the graceful stop takes seconds
POLL_S = 0.5  # how often a process list is read while waiting on it


def _marked(mark: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _engine_servers(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in procs:
        try:
            cmd = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if "engine" in cmd and "serve" in cmd:
            out.append(proc)
    return out


def _until(done: Callable[[], bool]) -> bool:
    """Poll `done` every POLL_S until it holds or GONE_DEADLINE_S passes (a hang detector); whether it held."""
    deadline = time.monotonic() + GONE_DEADLINE_S
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def _wait_all_gone(mark: str) -> list[str]:
    """Poll until no marked process is left; returns the command lines of those still there at the deadline."""
    _until(lambda: not _marked(mark))
    return [" ".join(p.cmdline()) for p in _marked(mark) if p.is_running()]


def _ended(proc: psutil.Process) -> bool:
    """Poll one known process until it is gone or a zombie.

    A process that is tearing down has already lost its address space, so its environment
    reads empty and `_marked` stops seeing it while it still shows as running for a moment
    (CI on 2 busy cores caught that window): the server's own pid is waited on as well.
    """

    def gone() -> bool:
        try:
            return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    return _until(gone)


@pytest.fixture
def marked_env(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    """A marker, an environment carrying it (TMPDIR inside tmp_path), and that temp folder; kills leftovers."""
    mark, tmp = uuid.uuid4().hex, tmp_path / "tmp"
    tmp.mkdir()
    yield mark, dict(os.environ, **{MARK: mark, "TMPDIR": str(tmp)}), tmp
    for proc in _marked(mark):  # never leave a server behind, even when the test failed
        proc.kill()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killing_the_dashboard_mid_run_leaves_no_server_and_no_temp_dir(
    sig: signal.Signals, marked_env: tuple[str, dict[str, str], Path], tmp_path: Path
) -> None:
    mark, env, tmp = marked_env
    port = free_port()
    log = tmp_path / "streamlit.log"
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
    ]
    with log.open("w") as out:
        dashboard = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, dashboard.poll, START_DEADLINE_S, "streamlit", log.read_text, path="/_stcore/health")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url + "/benchmark")
                main = page.get_by_test_id("stMainBlockContainer")
                expect(page.get_by_role("button", name="Run benchmark")).to_be_enabled(timeout=60_000)
                tick_eager(page, page.get_by_test_id("stSidebar"), SIDEBAR_EAGER)
                for label, value in (("Input tokens", "16"), ("Output tokens", "4"), ("Requests (per run)", "500")):
                    main.get_by_label(label).fill(value)
                    main.get_by_label(label).press("Enter")
                page.get_by_role("button", name="Run benchmark").click()
                expect(main.get_by_text(re.compile(r"^running concurrency:4"))).to_be_visible(timeout=RUN_DEADLINE_MS)
            finally:
                browser.close()
        servers = _engine_servers(_marked(mark))
        assert servers, "the run did not start a bundled server"
        os.kill(dashboard.pid, sig)
        dashboard.wait(timeout=GONE_DEADLINE_S)
        left = _wait_all_gone(mark)
        assert not left, f"still running after the dashboard got {sig.name}: {left}\n{log.read_text()[-2000:]}"
        assert not [p.name for p in tmp.iterdir() if p.name.startswith("preflight")]
    finally:
        if dashboard.poll() is None:
            dashboard.kill()
            dashboard.wait()


HOLDER = """
import sys, time
from checks.load.targets import BundledOptions, BundledTarget
target = BundledTarget(BundledOptions(threads=1, eager=True))
target.start()
print(target.proc.pid, target.log_path, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_the_server_stops_when_the_process_that_started_it_is_killed(
    marked_env: tuple[str, dict[str, str], Path], preflight_env: Path
) -> None:
    mark, env, tmp = marked_env
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline() if holder.stdout else ""
        assert line, f"the holder exited ({holder.wait()}) before the server was ready"
        pid_text, log_path = line.split(" ", 1)
        server = psutil.Process(int(pid_text))
        holder.kill()  # SIGKILL: no cleanup runs in the holder
        holder.wait()
        left = _wait_all_gone(mark)
        assert not left, f"the server outlived the process that started it: {left}"
        assert _ended(server), f"the server {server.pid} is still running"
        # Its log stays in Preflight's private log folder, readable by the owner only (item 15).
        log = Path(log_path.strip())
        assert log.parent == preflight_env / "logs"
        assert (log.parent.stat().st_mode & 0o777, log.stat().st_mode & 0o777) == (0o700, 0o600)
        assert "has exited: stopping" in log.read_text()
        assert not list(tmp.iterdir())
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
