"""A benchmark or a readiness checklist running in a child process, for the dashboard.

Streamlit reruns the page script on every interaction, so a run cannot live in the
script: it lives in a `Job`, and the page polls `snapshot()` from a fragment. A job runs
one work function, `run_benchmark` or `run_checklist`, which both take
`(config, progress=, cancel=, on_status=)` and return a document.

Jobs are started through `REGISTRY`, one per dashboard process and shared by every
browser session: a reloaded page (a new session) or a second tab finds the running job
there and can stop it, and a second job is refused while one runs (`JobBusy`): two runs
would share the CPUs and skew each other's figures.

The load generator runs in its own process, not a thread of the Streamlit server:
in a thread it shares the server's GIL with every rerun and fragment, its event loop
wakes late, and the self-check rightly marks the run invalid (seen on the 2-core
machine: a 4-request run came out INVALID from a thread). The child reports progress,
status lines and the result (a `BenchmarkResult` or `ReadinessReport`, pickled) over a queue;
a reader thread here keeps the latest. The child saves the result in the reports
history before handing it over, so a run is kept even if no page is watching.
`cancel()` sets an event the child turns into the loadgen's cancel; what was measured
is kept. A Stop before the target was ready is CANCELLED with no result. A child that
dies is a FAILED job with its exit code, never one left running.

The child never outlives the dashboard with a server behind it: SIGTERM (which
multiprocessing sends to a daemon child when the dashboard exits) becomes SystemExit,
so the `with target` blocks stop the bundled server; and a dashboard that dies without
a word (SIGKILL) is seen through the parent's sentinel and handled the same way.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from checks.load.benchmark import run_benchmark
from checks.load.targets import TargetCancelled, TargetError
from checks.readiness.runner import run_checklist
from checks.readiness.slo import SloProfileError
from checks.study_job import run_study
from engine.errors import EngineError
from reports.history import History
from reports.home import history_dir
from reports.store import DocumentError

PROGRESS_EVERY_S = 0.25  # the child sends at most this often; the page polls once a second
_CONTEXT = mp.get_context("spawn")  # a fresh interpreter: no inherited server threads or locks


class JobKind(StrEnum):
    BENCHMARK = "benchmark"
    CHECKLIST = "checklist"
    STUDY = "study"


class JobBusy(Exception):
    """A job already runs in this dashboard process; the message names it and what to do."""


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
    save_error: DocumentError | None = None  # why the result is not in the history (a full disk, say); else None


Work = Callable[..., BaseModel]


def _exit_on_sigterm(out: Any) -> None:
    """SIGTERM in the child raises SystemExit in its main thread, so every `finally` and `with` runs."""

    def handler(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the cleanup that follows must not be cut short
        out.cancel_join_thread()  # nobody may be reading any more: never block the exit on the queue
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _exit_with_parent() -> None:
    """Wait until the dashboard process is gone (its sentinel turns ready), then exit as on SIGTERM."""
    parent = mp.parent_process()
    if parent is None or parent.sentinel is None:
        return
    multiprocessing.connection.wait([parent.sentinel])
    os.kill(os.getpid(), signal.SIGTERM)


def _child(work: Work, config: BaseModel, out: Any, cancel_flag: Any) -> None:
    """The child process: run the work, send ("progress" | "status" | "result" | "error" | "cancelled", payload)."""
    _exit_on_sigterm(out)
    threading.Thread(target=_exit_with_parent, name="preflight-parent-watch", daemon=True).start()
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
    except TargetCancelled as exc:
        out.put(("cancelled", str(exc)))
    except (TargetError, DocumentError, SloProfileError, EngineError, ValueError, OSError) as exc:  # input or target
        out.put(("error", str(exc)))
    except Exception as exc:  # noqa: BLE001 - the page must learn why, not wait forever
        out.put(("error", f"the run stopped on an unexpected {type(exc).__name__}: {exc}"))
    else:
        try:  # every run is kept, as from the CLI; a history that cannot be written costs the run nothing
            History(history_dir()).save(result)
        except DocumentError as exc:  # the exception itself, so that the page can word its parts as a sentence
            out.put(("unsaved", exc))
        out.put(("result", result))


@dataclass(slots=True)
class Job:
    """One call of `work(config, ...)` in a child process."""

    kind: JobKind
    work: Work
    config: BaseModel
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # what the page keys per-job caches on
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _state: JobState = JobState.RUNNING
    _status: str = "starting"
    _progress: Any = None
    _result: Any = None
    _error: str | None = None
    _save_error: DocumentError | None = None
    _started: float = field(default_factory=time.monotonic)
    _ended: float | None = None
    _process: Any = None
    _queue: Any = None
    _cancel: Any = None
    _reader: threading.Thread | None = None

    def start(self) -> Job:
        self._queue, self._cancel = _CONTEXT.Queue(), _CONTEXT.Event()
        self._process = _CONTEXT.Process(
            target=_child, args=(self.work, self.config, self._queue, self._cancel), name="preflight-job", daemon=True
        )
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
            elif kind == "unsaved":
                self._set(_save_error=payload)
            elif kind == "error":
                self._finish(JobState.FAILED, error=payload)
                return
            elif kind == "cancelled":
                self._finish(JobState.CANCELLED, error=payload)  # why nothing was kept, in words
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
        self._set(
            _status="stopping at the next measured point"
            if self.kind == JobKind.STUDY
            else "stopping: in-flight requests are being cancelled, what was measured is kept"
        )

    def wait(self, timeout_s: float) -> bool:
        """Block until the job ends (tests and the CLI); True when it did."""
        if self._reader is not None:
            self._reader.join(timeout_s)
        return self.snapshot().state != JobState.RUNNING

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            end = self._ended if self._ended is not None else time.monotonic()
            return JobSnapshot(
                self._state,
                self._status,
                self._progress,
                end - self._started,
                self._result,
                self._error,
                self._save_error,
            )


WORK: dict[JobKind, Work] = {
    JobKind.BENCHMARK: run_benchmark,
    JobKind.CHECKLIST: run_checklist,
    JobKind.STUDY: run_study,
}


def new_job(kind: JobKind, config: BaseModel) -> Job:
    """A job of `kind` on `config`, not started: start it with `REGISTRY.start` (or `.start()` outside a dashboard)."""
    return Job(kind, WORK[kind], config)


class JobRegistry:
    """The jobs of one dashboard process, seen from every session: at most one runs at a time.

    Only the running job needs finding (a session keeps its own finished job in its
    state), so the registry holds the latest one; the lock makes "is one running? then
    start this one" a single step, so two tabs that press Run together start one job.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: Job | None = None

    def start(self, job: Job) -> Job:
        """Start `job`; JobBusy while another one runs."""
        with self._lock:
            busy = self._running()
            if busy is not None:
                raise JobBusy(
                    f"a {busy.kind} is already running ({busy.snapshot().elapsed_s:.0f} s so far): stop it or wait "
                    "until it ends; runs go one at a time so that they do not share the CPUs"
                )
            self._latest = job.start()
            return job

    def running(self) -> Job | None:
        """The job running now, whichever session started it; None when idle."""
        with self._lock:
            return self._running()

    def _running(self) -> Job | None:
        job = self._latest
        return job if job is not None and job.snapshot().state == JobState.RUNNING else None


REGISTRY = JobRegistry()  # one per process: the dashboard's Streamlit server is one process
