"""A saved benchmark of the bundled engine as a run the planner can predict: the Hardware page's
"predicted vs measured" from the history, without a separate `python -m engine generate --json`,
and the saved benchmarks a calibration can be fitted on ("Calibrate from a run").

Only a `sync` run qualifies: one request at a time is what the planner's single-stream figures
predict. Its prefill rate is the mean prompt over the median TTFT and its decode rate one over the
median TPOT, both measured through the server, so they include what serving adds (HTTP,
scheduling) and the comparison says so.
"""

from __future__ import annotations

import functools
import uuid
from pathlib import Path

from planner.calibrate_cli import ServedBy, concurrency_of, runs_of
from planner.calibration import CalibrationRun
from planner.compare import MeasuredRun
from reports import documents
from reports.benchmark_result import BenchmarkResult, BundledTargetDoc
from reports.history import Filters, History, HistoryEntry
from reports.home import private_dir

SERVED_NOTE = "measured through the bundled server (sync profile): includes HTTP and scheduling"


def measured_run(doc: BenchmarkResult) -> MeasuredRun | None:
    """The run the planner can predict, or None when `doc` is not a sync benchmark of the bundled engine."""
    target = doc.target
    run = doc.runs[0] if len(doc.runs) == 1 else None
    if not isinstance(target, BundledTargetDoc) or run is None or run.profile != "sync":
        return None
    s = run.summary
    done = s.completed
    if not done or not s.total_input_tokens or not s.total_output_tokens:
        return None
    prompt, completion = s.total_input_tokens / done, s.total_output_tokens / done
    prefill = prompt / (s.median_ttft_ms / 1000) if s.median_ttft_ms else None
    decode = 1000 / s.median_tpot_ms if s.median_tpot_ms else None
    return MeasuredRun(
        quant=target.quant,
        device=target.device,
        prompt_tokens=round(prompt),
        completion_tokens=round(completion),
        prefill_tok_s=prefill,
        decode_tok_s=decode,
        weight_bytes=None,  # the server's weights are not in a benchmark result
    )


def sync_runs(history: History) -> list[HistoryEntry]:
    """The saved benchmarks `measured_run` can use: the bundled engine, one sync run, newest first."""
    return [
        e
        for e in history.entries(Filters(kind="benchmark"))
        if e.unreadable is None and (e.target or "").startswith("bundled") and e.profile == "sync"
    ]


def calibratable_runs(history: History) -> list[HistoryEntry]:
    """Saved benchmarks of the bundled engine at a fixed concurrency (sync counts as 1), newest first:
    what `python -m planner calibrate` can fit without being told what served them."""
    return [
        e
        for e in history.entries(Filters(kind="benchmark"))
        if e.unreadable is None and (e.target or "").startswith("bundled") and concurrency_of(e.profile or "")
    ]


def calibration_runs(history: History, ids: list[str], served: ServedBy | None = None) -> list[CalibrationRun]:
    """The runs of the saved results `ids`, as the planner's calibration takes them."""
    return [run for doc_id in ids for run in runs_of(history.load(doc_id), f"history:{doc_id}", served or ServedBy())]


STEP_LOG_DIR = "step-logs"  # under Preflight's private home
KEEP_STEP_LOGS = 50  # ~1 MB each for a 40-request run at 16 streams; older ones are deleted


def new_step_log_path(folder: Path | None = None) -> Path:
    """Where a bundled benchmark's server writes its step log (`BenchmarkConfig.step_log`): a fresh name in
    Preflight's private folder, so that a calibration can later price passes from the run it came from.
    The oldest logs beyond KEEP_STEP_LOGS are deleted here; a saved result whose log is gone calibrates
    from its figures alone."""
    folder = folder or private_dir(STEP_LOG_DIR)
    logs = sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    for old in logs[: max(0, len(logs) - (KEEP_STEP_LOGS - 1))]:
        old.unlink(missing_ok=True)
    return folder / f"steps-{uuid.uuid4().hex[:12]}.jsonl"


def calibration_step_logs(history: History, ids: list[str]) -> list[str]:
    """The step logs the saved results `ids` recorded (`config.step_log`) that still exist, in order.

    The Plan page asks on every rerun while fit runs are picked, so each result is read once per version
    of its file (`_recorded_step_log`), not parsed again at each click."""
    out = []
    for doc_id in ids:
        file = history.resolve(doc_id)
        stat = file.stat()
        path = _recorded_step_log(file, stat.st_mtime_ns, stat.st_size)
        if path is not None and Path(path).is_file():
            out.append(path)
    return out


@functools.lru_cache(maxsize=256)
def _recorded_step_log(file: Path, mtime_ns: int, size: int) -> str | None:
    """The step log a saved benchmark result names (None: none, or not a benchmark); keyed by the file's
    version, since a result is only ever replaced whole."""
    doc = documents.load(file)
    path = doc.config.get("step_log") if isinstance(doc, BenchmarkResult) else None
    return path if isinstance(path, str) else None
