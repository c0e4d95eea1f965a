"""Streamlit pieces that more than one page shows. Pages never import each other, so they meet here."""

from collections.abc import Callable

import streamlit as st
from pydantic import BaseModel, ValidationError

from checks.jobs import REGISTRY, Job, JobBusy, JobKind, JobSnapshot, JobState, new_job
from checks.load.benchmark import config_error
from planner.hardware import Hardware, detect, gib

PENDING = object()  # a form value still to be given (a file not chosen yet, or a bad one the page explains beside it)


@st.cache_data(ttl=60, show_spinner="Detecting hardware...")
def cached_hardware() -> Hardware:
    """One detection per minute for every page (detection reads /proc, NVML and torch)."""
    return detect()


def machine_metrics(hw: Hardware) -> None:
    """Cores, RAM and disk as one row of metric cards."""
    cols = st.columns(4)
    cols[0].metric("Cores (physical / logical)", f"{hw.physical_cores or '?'} / {hw.logical_cores or '?'}")
    cols[1].metric("RAM total", gib(hw.ram_total_bytes))
    cols[2].metric("RAM available", gib(hw.ram_available_bytes))
    cols[3].metric("Disk free (weights cache)", gib(hw.disk_free_bytes), help=hw.disk_path)


def run_panel(
    prefix: str,
    model: type[BaseModel],
    values: dict,
    label: str,
    kind: JobKind,
    hint: str,
    live: Callable[[Job], None],
) -> JobSnapshot:
    """The run cycle both job pages share: validate the form into `model`, Run (disabled while invalid or while
    any job runs), then a hint, the live view, or the failure; returns the finished job's snapshot, else stops.

    The running job comes from the process-wide registry, so a reloaded page or a second tab shows it and can
    stop it; a job of the other page blocks Run with a note."""
    busy = REGISTRY.running()
    if busy is not None and busy.kind == kind:
        st.session_state[f"{prefix}_job"] = busy  # reattach: this session may be a reload or another tab
    job: Job | None = st.session_state.get(f"{prefix}_job")
    config = None
    if "target" in values and not values["target"]:
        pass  # no remote URL yet: `target_line` already says where to enter it; not an error before any typing
    elif any(v is PENDING for v in values.values()):
        pass  # the page already says, beside the input, what to give or what is wrong with it
    else:
        try:
            config = model(**values)
        except ValidationError as exc:
            st.error(config_error(exc))
    if busy is not None and busy.kind != kind:
        st.info(f"A {busy.kind} is running ({busy.snapshot().elapsed_s:.0f} s so far); Run is available when it ends.")
    if st.button(label, type="primary", disabled=config is None or busy is not None, key=f"{prefix}_run"):
        try:
            st.session_state[f"{prefix}_job"] = REGISTRY.start(new_job(kind, config))
        except JobBusy as exc:  # another tab pressed Run first
            st.error(str(exc))
            st.stop()
        st.rerun()  # redraw the whole page with Run disabled: the live fragment redraws only itself
    if job is None:
        st.info(hint)
        st.stop()
    if job is busy:
        live(job)
        st.stop()
    snap = job.snapshot()
    if snap.state == JobState.FAILED:
        st.error(snap.error)
        st.stop()
    if snap.result is None:  # stopped before anything could be kept (the target was starting, a study's points)
        why = snap.error or "stopped: nothing was measured"  # the job's own words, e.g. "stopped while waiting..."
        st.warning(why[0].upper() + why[1:] + ".")
        st.stop()
    return snap
