"""Home as the start of the pre-launch flow: each step's status for the current target, and the Quick check.

A newcomer opens Home and needs to know what to do next; someone coming back needs to see
where they left off. So Home lists the flow (this machine, a plan, the target, a benchmark,
the checklist and its verdict, the report) with what the history holds for the sidebar's
target, and offers the Quick check: the bundled engine, a small load and the whole
checklist, ending in a verdict and a saved report in about a minute.
"""

from __future__ import annotations

import streamlit as st

from checks.jobs import REGISTRY, JobBusy, JobKind, JobState, new_job
from checks.readiness.config import QUICK_CHECK, quick_check_command, quick_check_config
from planner.hardware import Hardware, describe_accelerator
from reports.history import History, HistoryEntry, target_label
from reports.home import history_dir
from widgets.checklist import live_progress, verdict_banner
from widgets.exports import saved_note
from widgets.target import CONNECTION_KEY

JOB_KEY = "check_job"  # the Checklist page's job: a Quick check shows there too, and blocks a second run


def history_target(values: dict) -> str | None:
    """The sidebar's target as the history names it ('bundled:int4', a redacted URL); None without a URL."""
    target = values.get("target") or ""
    return target_label(target) if target else None


def _when(entry: HistoryEntry) -> str:
    return entry.started_at.strftime("%Y-%m-%d %H:%M UTC") if entry.started_at else "undated"


def _step(done: bool, title: str, text: str, page: str | None = None, label: str | None = None) -> None:
    icon = ":material/check_circle:" if done else ":material/radio_button_unchecked:"
    st.markdown(f"{icon} **{title}**: {text}")
    if page is not None:
        st.page_link(page, label=label or title, icon=":material/arrow_forward:")


def flow(values: dict, hw: Hardware) -> None:
    """The steps, each with its status for the current target (from the history) or what to do next."""
    target = history_target(values)
    history = History(history_dir())
    bench = history.latest(target, "benchmark") if target else None
    report = history.latest(target, "readiness") if target else None
    _step(True, "1. This machine", f"{hw.cpu_model}; {describe_accelerator(hw)}", "app_pages/hardware.py", "Hardware")
    _step(
        False,
        "2. Plan",
        "pick a model and a GPU to see what fits, how fast, and the launch command",
        "app_pages/plan.py",
        "Plan",
    )
    tested = st.session_state.get(CONNECTION_KEY)
    if target is None:
        _step(False, "3. Target", "enter the endpoint's URL in the sidebar, or pick the bundled engine")
    elif target.startswith("bundled"):
        _step(True, "3. Target", f"`{target}`, started by Preflight on this machine (change it in the sidebar)")
    else:
        conn = tested[1] if tested is not None and tested[0][0] == values.get("target") else None
        checked = "" if conn is None else (" - connection tested: ready" if conn.ok else " - connection: not ready")
        _step(conn is not None and conn.ok, "3. Target", f"`{target}`{checked} (sidebar: Test connection)")
    if bench is not None:
        _step(True, "4. Benchmark", f"{bench.headline} ({_when(bench)})", "app_pages/benchmark.py", "Benchmark again")
    else:
        _step(False, "4. Benchmark", "not run on this target yet", "app_pages/benchmark.py", "Benchmark")
    if report is not None:
        _step(
            True,
            "5. Checklist",
            f"**{report.verdict}**: {report.headline} ({_when(report)})",
            "app_pages/checklist.py",
            "Checklist again",
        )
        _step(
            True,
            "6. Report",
            f"saved as `{report.id}`: open, compare and export it on Reports",
            "app_pages/reports.py",
            "Reports",
        )
    else:
        _step(False, "5. Checklist", "no verdict for this target yet", "app_pages/checklist.py", "Checklist")
        _step(False, "6. Report", "every run is saved; they appear on Reports", "app_pages/reports.py", "Reports")


def quick_check(eager: bool = False) -> None:
    """The button, the live run (the Checklist page's job, so both pages see it), then the verdict.

    `eager`: the sidebar's "Eager decode" choice; otherwise the bundled server builds its compiled
    decode step first on a new machine (about a minute, once), which the caption says."""
    busy = REGISTRY.running()
    if busy is not None and busy.kind == JobKind.CHECKLIST:
        st.session_state[JOB_KEY] = busy
    requests, profile = QUICK_CHECK["requests"], QUICK_CHECK["profile"]
    build = "" if eager else " (plus a one-time build of the compiled decode step on a new machine, about a minute)"
    st.caption(
        f"The bundled engine, {requests} requests ({profile}) and every check: about a minute{build}. "
        f"Same as `{quick_check_command(eager)}`."
    )
    if st.button(
        "Quick check", type="primary", disabled=busy is not None, key="home_quick_check", icon=":material/bolt:"
    ):
        try:
            st.session_state[JOB_KEY] = REGISTRY.start(new_job(JobKind.CHECKLIST, quick_check_config(eager)))
            st.session_state["home_quick_started"] = True
        except JobBusy as exc:
            st.error(str(exc))
            return
        st.rerun()
    job = st.session_state.get(JOB_KEY)
    if job is None or not st.session_state.get("home_quick_started"):
        if busy is not None:
            st.info(f"A {busy.kind} is running; the Quick check is available when it ends.")
        return
    if job is busy:
        live_progress(job)
        return
    snap = job.snapshot()
    if snap.state == JobState.FAILED:
        st.error(snap.error)
    elif snap.result is None:
        st.warning("Stopped before the bundled engine was ready: nothing was measured.")
    else:
        verdict_banner(snap.result)
        if snap.save_error is not None:  # a full disk, say: the reason, and Save again
            saved_note(snap.result, snap.save_error)
        st.page_link(
            "app_pages/checklist.py",
            label="See every check, its evidence and the downloads",
            icon=":material/checklist:",
        )
