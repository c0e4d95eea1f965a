"""Checklist: is this deployment ready to launch? Every line measured, with its evidence."""

import streamlit as st
from pydantic import ValidationError

from checks.jobs import Job, JobState
from checks.load.benchmark import config_error
from checks.readiness.config import ChecklistConfig
from checks.readiness.runner import run_checklist
from reports.markdown import to_markdown
from reports.store import to_json
from widgets_benchmark import target_inputs
from widgets_checklist import judging_inputs, live_progress, results_by_category, verdict_banner

st.title("Readiness checklist")
st.caption("Performance against an SLO profile, resources, security, monitoring and reliability. A check that "
           "cannot measure says ERROR or SKIP, never PASS.")  # fmt: skip
job: Job | None = st.session_state.get("check_job")
running = job is not None and job.snapshot().state == JobState.RUNNING
values = {**target_inputs("check"), **judging_inputs()}
values.pop("compile", None)
config, problem = None, None
try:
    config = ChecklistConfig(**values)
except ValidationError as exc:
    problem = config_error(exc)
if problem:
    st.error(problem)
if st.button("Run checklist", type="primary", disabled=config is None or running, key="check_run"):
    st.session_state["check_job"] = Job(run_checklist, config).start()
    st.session_state.pop("check_downloads", None)
    st.rerun()
if job is None:
    st.info("Choose a target, an SLO profile and the exposure, then press Run checklist.")
    st.stop()
if running:
    live_progress(job)
    st.stop()
snap = job.snapshot()
if snap.state == JobState.FAILED:
    st.error(snap.error)
    st.stop()
report = snap.result
verdict_banner(report)
results_by_category(report)
if "check_downloads" not in st.session_state:  # serialise once per report, not on every rerun
    st.session_state["check_downloads"] = (to_json(report), to_markdown(report))
report_json, report_md = st.session_state["check_downloads"]
c1, c2 = st.columns(2)
c1.download_button("Download report (JSON)", report_json, file_name="preflight-readiness.json",
                   mime="application/json", key="check_download_json")  # fmt: skip
c2.download_button("Download report (Markdown)", report_md, file_name="preflight-readiness.md",
                   mime="text/markdown", key="check_download_md")  # fmt: skip
