"""Checklist: is this deployment ready to launch? Every line measured, with its evidence."""

import streamlit as st

from checks.jobs import JobKind, JobState
from checks.readiness.config import ChecklistConfig
from reports.markdown import to_markdown
from reports.store import to_json
from widgets import run_panel
from widgets_benchmark import target_inputs
from widgets_checklist import judging_inputs, live_progress, results_by_category, verdict_banner

st.title("Readiness checklist")
st.caption("Performance against an SLO profile, resources, security, monitoring and reliability. A check that "
           "cannot measure says ERROR or SKIP, never PASS.")  # fmt: skip
values = {**target_inputs("check"), **judging_inputs()}
HINT = "Choose a target, an SLO profile and the exposure, then press Run checklist."
snap = run_panel("check", ChecklistConfig, values, "Run checklist", JobKind.CHECKLIST, HINT, live_progress)
report = snap.result
if snap.state == JobState.CANCELLED:
    st.warning("Stopped: the checks that had not run are ERROR, so the verdict is INCOMPLETE.")
verdict_banner(report)
results_by_category(report)
job_id = st.session_state["check_job"].job_id
if st.session_state.get("check_downloads", (None,))[0] != job_id:  # serialise once per report, not every rerun
    st.session_state["check_downloads"] = (job_id, to_json(report), to_markdown(report))
_, report_json, report_md = st.session_state["check_downloads"]
c1, c2 = st.columns(2)
c1.download_button("Download report (JSON)", report_json, file_name="preflight-readiness.json",
                   mime="application/json", key="check_download_json")  # fmt: skip
c2.download_button("Download report (Markdown)", report_md, file_name="preflight-readiness.md",
                   mime="text/markdown", key="check_download_md")  # fmt: skip
