"""A benchmark or a readiness checklist running in a child process, for the dashboard.

Streamlit reruns the page script on every interaction, so a run cannot live in the
script: it lives in a `Job` kept in the session state (one per browser session, never
a module global), and the page polls `snapshot()` from a fragment. A job runs one
work function, `run_benchmark` or `run_checklist`, which both take
`(config, progress=, cancel=, on_status=)` and return a document.

The load generator runs in its own process, not a thread of the Streamlit server:
in a thread it shares the server's GIL with every rerun and fragment, its event loop
wakes late, and the self-check rightly marks the run invalid (seen on the 2-core
machine: a 4-request run came out INVALID from a thread). The child reports progress,
status lines and the result (a `BenchmarkResult` or `ReadinessReport`, pickled) over a queue;
a reader thread here keeps the latest.
`cancel()` sets an event the child turns into the loadgen's cancel; what was measured
is kept. A child that dies is a FAILED job with its exit code, never one left running.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from checks.load.benchmark import BenchmarkConfig, run_benchmark
from checks.load.targets import TargetError
from checks.readiness.config import ChecklistConfig
from checks.readiness.runner import run_checklist
from checks.readiness.slo import SloProfileError
from reports.store import DocumentError

PROGRESS_EVERY_S = 0.25  # the child sends at most this often; the page polls once a second
_CONTEXT = mp.get_context("spawn")  # a fresh interpreter: no inherited server threads or locks


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
    progress: Any  # the work's progress object: checks.load.loadgen.Progress or a ChecklistProgress
    elapsed_s: float
    result: Any  # BenchmarkResult or ReadinessReport
    error: str | None


Work = Callable[..., BaseModel]


def _child(work: Work, config: BaseModel, out: Any, cancel_flag: Any) -> None:
    """The child process: run the work, send ("progress" | "status" | "result" | "error", payload)."""
    cancel = threading.Event()

    def watch() -> None:
        cancel_flag.wait()
        cancel.set()

    threading.Thread(target=watch, daemon=True).start()
    last = 0.0

    def progress(p: Any) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S or getattr(p, "in_flight", 0) == 0:
            last = now
            out.put(("progress", p))

    try:
        result = work(config, progress=progress, cancel=cancel, on_status=lambda m: out.put(("status", m)))
    except (TargetError, DocumentError, SloProfileError, ValueError, OSError) as exc:  # the input or the target
        out.put(("error", str(exc)))
    except Exception as exc:  # noqa: BLE001 - the page must learn why, not wait forever
        out.put(("error", f"the run stopped on an unexpected {type(exc).__name__}: {exc}"))
    else:
        out.put(("result", result))


@dataclass(slots=True)
class Job:
    """One call of `work(config, ...)` in a child process."""

    work: Work
    config: BaseModel
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # what the page keys per-job caches on
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _state: JobState = JobState.RUNNING
    _status: str = "starting"
    _progress: Any = None
    _result: Any = None
    _error: str | None = None
    _started: float = field(default_factory=time.monotonic)
    _ended: float | None = None
    _process: Any = None
    _queue: Any = None
    _cancel: Any = None
    _reader: threading.Thread | None = None

    def start(self) -> Job:
        self._queue, self._cancel = _CONTEXT.Queue(), _CONTEXT.Event()
        self._process = _CONTEXT.Process(target=_child, args=(self.work, self.config, self._queue, self._cancel),
                                         name="preflight-job", daemon=True)  # fmt: skip
        self._process.start()
        self._reader = threading.Thread(target=self._read, name="preflight-job-reader", daemon=True)
        self._reader.start()
        return self

    def _set(self, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)

    def _read(self) -> None:
        """Keep the latest message; end the job on a result, an error, or the child's death."""
        while True:
            try:
                kind, payload = self._queue.get(timeout=0.5)
            except queue.Empty:
                if not self._process.is_alive():
                    code = self._process.exitcode
                    self._finish(JobState.FAILED, error=f"the run's process exited ({code}) without a result")
                    return
                continue
            if kind == "progress":
                self._set(_progress=payload)
            elif kind == "status":
                self._set(_status=payload)
            elif kind == "error":
                self._finish(JobState.FAILED, error=payload)
                return
            else:
                self._finish(JobState.CANCELLED if self._cancel.is_set() else JobState.DONE, result=payload)
                return

    def _finish(self, state: JobState, result: Any = None, error: str | None = None) -> None:
        self._set(_state=state, _result=result, _error=error, _status=str(state), _ended=time.monotonic())
        self._process.join(timeout=10)

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
        self._set(_status="stopping: in-flight requests are being cancelled, what was measured is kept")

    def wait(self, timeout_s: float) -> bool:
        """Block until the job ends (tests and the CLI); True when it did."""
        if self._reader is not None:
            self._reader.join(timeout_s)
        return self.snapshot().state != JobState.RUNNING

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            end = self._ended if self._ended is not None else time.monotonic()
            return JobSnapshot(self._state, self._status, self._progress, end - self._started, self._result,
                               self._error)  # fmt: skip


def benchmark_job(config: BenchmarkConfig) -> Job:
    """A job that runs `run_benchmark(config)`; call `.start()`."""
    return Job(run_benchmark, config)


def checklist_job(config: ChecklistConfig) -> Job:
    """A job that runs `run_checklist(config)`; call `.start()`."""
    return Job(run_checklist, config)
