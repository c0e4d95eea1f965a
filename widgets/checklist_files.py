"""The files the Checklist page can judge by, as `python -m checks run` takes them: --from, --plan, --slo FILE.

Each file is checked the moment it is picked, by the loader the run itself uses
(`checks.readiness.inputs.input_problem`). A bad one is explained beside its input in the
loader's words, naming the file as the person knows it (their upload's name, or the saved
run's id) rather than the private copy, and Run stays disabled (`widgets.common.PENDING`)
until the file is replaced or removed.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from checks.readiness.inputs import input_problem
from checks.readiness.slo import profile_names
from reports.history import Filters, History, HistoryEntry
from reports.home import history_dir
from widgets.common import PENDING
from widgets.uploads import save_upload

SLO_FILE = "my own profile file (YAML or JSON)"
MEASURE_NOW, SAVED_RUN, RESULT_FILE = "Measure now", "A saved benchmark", "A result file"


@st.cache_data(max_entries=64, show_spinner=False)
def _problem(field: str, path: str, size: int, mtime_ns: int) -> str | None:
    """`input_problem`, once per version of a file: a saved result with every record takes a moment to validate,
    and the page reruns on every click. Size and mtime are in the key so that a changed file is checked again."""
    return input_problem(field, Path(path))


def _checked(field: str, path: Path, shown_as: str) -> object:
    """The path (as text, for ChecklistConfig) when the run's loader accepts it; else its reason beside the
    input, and PENDING."""
    try:
        stat = path.stat()
    except OSError as exc:
        st.error(f"{shown_as} cannot be read: {exc.strerror or exc}.")
        return PENDING
    problem = _problem(field, str(path), stat.st_size, stat.st_mtime_ns)
    if problem is None:
        return str(path)
    st.error(problem.replace(str(path), shown_as))
    return PENDING


def _uploaded(field: str, label: str, types: list[str], key: str, help_text: str) -> object | None:
    """An uploaded file, kept in Preflight's private uploads folder and checked; None until one is uploaded."""
    upload = st.file_uploader(label, type=types, key=key, help=help_text)
    if upload is None:
        return None
    path = save_upload(upload.getvalue(), upload.name, tuple(f".{t}" for t in types))
    return _checked(field, path, f"'{upload.name}'")


def slo_input() -> object:
    """A shipped profile's name, or an uploaded profile file (`--slo FILE`); PENDING while none or a bad one."""
    choice = st.selectbox(
        "SLO profile",
        [*profile_names(), SLO_FILE],
        key="check_slo",
        help="the limits each performance line is held to; a file uses the fields of a shipped profile "
        "(name, source and at least one limit, e.g. ttft_p95_ms)",
    )
    if choice != SLO_FILE:
        return choice
    picked = _uploaded("slo", "SLO profile file", ["yaml", "yml", "json"], "check_slo_file", "YAML or JSON")
    return PENDING if picked is None else picked


def _entry_line(entry: HistoryEntry) -> str:
    label = f" · {entry.label}" if entry.label else ""
    return f"{entry.id} · {entry.target}{label} · {entry.headline}"


def _saved_run() -> object:
    history = History(history_dir())
    saved = {e.id: e for e in history.entries(Filters(kind="benchmark")) if e.unreadable is None and e.id}
    if not saved:
        st.caption(
            "No benchmark is saved yet: run one on the Benchmark page (every run is kept in the history), "
            "or upload a result file."
        )
        return PENDING
    ref = st.selectbox("Saved benchmark", list(saved), format_func=lambda i: _entry_line(saved[i]), key="check_saved")
    entry = saved[ref]
    return _checked("from_path", history.root / entry.file, f"the saved run {entry.id}")


def benchmark_source() -> dict:
    """Measure now, or judge performance from a run measured earlier (`--from`): one from the history, or a file."""
    how = st.radio(
        "Performance judged from",
        [MEASURE_NOW, SAVED_RUN, RESULT_FILE],
        horizontal=True,
        key="check_perf_from",
        help="a saved run is judged as it was measured, without running the load again (python -m checks run --from)",
    )
    if how == MEASURE_NOW:
        return {}
    if how == SAVED_RUN:
        return {"from_path": _saved_run()}
    picked = _uploaded(
        "from_path",
        "Benchmark result (JSON)",
        ["json"],
        "check_from_file",
        "a result downloaded from the Benchmark page, or written by python -m checks bench --out",
    )
    return {"from_path": PENDING if picked is None else picked}


def plan_input() -> dict:
    """An optional plan (`--plan`): kept in the report, and the KV-capacity line's fallback."""
    picked = _uploaded(
        "plan_path",
        "Plan (optional)",
        ["json"],
        "check_plan_file",
        "python -m planner recommend --json: kept in the report; when the server's /metrics do not state its KV "
        "pool, the KV-capacity line judges the declared streams and context against the plan's prediction",
    )
    return {} if picked is None else {"plan_path": picked}
