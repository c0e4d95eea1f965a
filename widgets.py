"""Streamlit pieces that more than one page shows. Pages never import each other, so they meet here."""

from collections.abc import Callable

import streamlit as st
from pydantic import BaseModel, ValidationError

from checks.jobs import Job, JobSnapshot, JobState
from checks.load.benchmark import config_error
from planner.hardware import Hardware, detect, gib


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
    start: Callable[[BaseModel], Job],
    hint: str,
    live: Callable[[Job], None],
) -> JobSnapshot:
    """The run cycle both job pages share: validate the form into `model`, Run (disabled while invalid or
    running), then a hint, the live view, or the failure; returns the finished job's snapshot, else stops."""
    job: Job | None = st.session_state.get(f"{prefix}_job")
    running = job is not None and job.snapshot().state == JobState.RUNNING
    config = None
    try:
        config = model(**values)
    except ValidationError as exc:
        st.error(config_error(exc))
    if st.button(label, type="primary", disabled=config is None or running, key=f"{prefix}_run"):
        st.session_state[f"{prefix}_job"] = start(config).start()
        st.rerun()  # redraw the whole page with Run disabled: the live fragment redraws only itself
    if job is None:
        st.info(hint)
        st.stop()
    if running:
        live(job)
        st.stop()
    snap = job.snapshot()
    if snap.state == JobState.FAILED:
        st.error(snap.error)
        st.stop()
    return snap
