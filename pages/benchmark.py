"""Benchmark: drive the bundled engine or any OpenAI-compatible endpoint with real load."""

import streamlit as st
from pydantic import ValidationError

from checks.jobs import BenchmarkJob, JobState
from checks.load.benchmark import BenchmarkConfig, config_error
from checks.load.console import format_result
from widgets_benchmark import (
    live_progress,
    load_inputs,
    result_charts,
    result_download,
    run_summaries,
    target_inputs,
    workload_inputs,
)

st.title("Benchmark")
st.caption("Real streaming load; every figure comes from per-request records you can download. "
           "Definitions follow vLLM's bench serve (TTFT, TPOT, ITL, E2E, goodput).")  # fmt: skip
job: BenchmarkJob | None = st.session_state.get("bench_job")
running = job is not None and job.snapshot().state == JobState.RUNNING
values = {**target_inputs(), **workload_inputs(), **load_inputs()}
config, problem = None, None
try:
    config = BenchmarkConfig(**values)
except ValidationError as exc:
    problem = config_error(exc)
if problem:
    st.error(problem)
if st.button("Run benchmark", type="primary", disabled=config is None or running, key="bench_run"):
    st.session_state["bench_job"] = BenchmarkJob(config).start()
    st.rerun()  # redraw the whole page with Run disabled: the live fragment below redraws only itself
if job is None:
    st.info("Choose a target, a workload and a load profile, then press Run benchmark.")
    st.stop()
if running:
    live_progress(job)
    st.stop()
snap = job.snapshot()
if snap.state == JobState.FAILED:
    st.error(snap.error)
    st.stop()
result = snap.result
if snap.state == JobState.CANCELLED:
    st.warning("Stopped: the figures cover the requests that finished before the stop.")
if not result.valid:
    st.error("The client could not keep up: these latencies are not the server's. See the self-check below.")
run_summaries(result)
result_charts(result)
with st.expander("Console summary, warnings and self-check"):
    st.code(format_result(result), language=None)
result_download(job.job_id, result)
