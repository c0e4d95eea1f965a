"""A benchmark running in a background thread, for the dashboard.

Streamlit reruns the page script on every interaction, so a run cannot live in the
script: it lives in a `BenchmarkJob` kept in the session state (one per browser
session, never a module global), and the page polls `snapshot()` from a fragment.
`cancel()` sets the loadgen's cancel event; what was measured is kept.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from checks.benchmark import BenchmarkConfig, run_benchmark
from checks.loadgen import Progress
from checks.targets import TargetError


class JobState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    """A consistent copy of a job's state for one page render."""

    state: JobState
    status: str
    progress: Progress | None
    elapsed_s: float
    result: dict[str, Any] | None
    error: str | None


@dataclass(slots=True)
class BenchmarkJob:
    """One `run_benchmark` call on a daemon thread."""

    config: BenchmarkConfig
    _cancel: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _state: JobState = JobState.RUNNING
    _status: str = "starting"
    _progress: Progress | None = None
    _result: dict[str, Any] | None = None
    _error: str | None = None
    _started: float = field(default_factory=time.monotonic)
    _ended: float | None = None
    _thread: threading.Thread | None = None

    def start(self) -> BenchmarkJob:
        self._thread = threading.Thread(target=self._run, name="preflight-benchmark", daemon=True)
        self._thread.start()
        return self

    def _set(self, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)

    def _run(self) -> None:
        try:
            result = run_benchmark(
                self.config,
                progress=lambda p: self._set(_progress=p),
                cancel=self._cancel,
                on_status=lambda msg: self._set(_status=msg),
            )
        except (TargetError, ValueError, OSError) as exc:  # the user's input or the target: say it plainly
            self._set(_state=JobState.FAILED, _error=str(exc), _status="failed", _ended=time.monotonic())
            return
        except Exception as exc:  # noqa: BLE001 - a worker thread must never leave the page "running" forever
            message = f"the benchmark stopped on an unexpected {type(exc).__name__}: {exc}"
            self._set(_state=JobState.FAILED, _error=message, _status="failed", _ended=time.monotonic())
            return
        state = JobState.CANCELLED if result["cancelled"] else JobState.DONE
        self._set(_state=state, _result=result, _status=str(state), _ended=time.monotonic())

    def cancel(self) -> None:
        self._cancel.set()
        self._set(_status="stopping: in-flight requests are being cancelled")

    def wait(self, timeout_s: float) -> bool:
        """Block until the job ends (tests and the CLI); True when it did."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.snapshot().state != JobState.RUNNING

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            end = self._ended if self._ended is not None else time.monotonic()
            return JobSnapshot(self._state, self._status, self._progress, end - self._started, self._result,
                               self._error)  # fmt: skip
