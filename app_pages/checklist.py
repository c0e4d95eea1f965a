"""Checklist: is this deployment ready to launch? Every line measured, with its evidence."""

import streamlit as st

from checks.jobs import JobKind, JobState
from checks.readiness.config import ChecklistConfig
from widgets.checklist import judging_inputs, live_progress, results_by_category, verdict_banner
from widgets.common import run_panel
from widgets.exports import downloads, saved_note
from widgets.target import current_target, target_line, target_sidebar

st.title("Readiness checklist")
st.caption(
    "Performance against an SLO profile, resources, security, monitoring and reliability. A check that "
    "cannot measure says ERROR or SKIP, never PASS."
)
target_sidebar()
target = current_target()
target_line(target)
values = {**target, **judging_inputs()}
HINT = (
    "Choose an SLO profile and the exposure (the target is in the sidebar), measure now or pick a saved run, "
    "then press Run checklist."
)
snap = run_panel("check", ChecklistConfig, values, "Run checklist", JobKind.CHECKLIST, HINT, live_progress)
report = snap.result
if snap.state == JobState.CANCELLED:
    st.warning("Stopped: the checks that had not run are ERROR, so the verdict is INCOMPLETE.")
verdict_banner(report)
results_by_category(report)
downloads(report, "check")
saved_note(report, snap.save_error)
