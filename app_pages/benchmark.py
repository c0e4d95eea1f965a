"""Benchmark: drive the bundled engine or any OpenAI-compatible endpoint with real load."""

import streamlit as st

from checks.jobs import JobKind, JobState
from checks.load.benchmark import BenchmarkConfig
from checks.load.console import format_result
from widgets.benchmark import (
    live_progress,
    load_inputs,
    result_charts,
    run_summaries,
    server_inputs,
    workload_inputs,
)
from widgets.common import run_panel
from widgets.exports import downloads, saved_note
from widgets.target import current_target, target_line, target_sidebar

st.title("Benchmark")
st.caption(
    "Real streaming load; every figure comes from per-request records you can download. "
    "Definitions follow vLLM's bench serve (TTFT, TPOT, ITL, E2E, goodput)."
)
target_sidebar()
target = current_target()
target_line(target)
values = {**target, **workload_inputs(), **load_inputs(), **server_inputs(target)}
HINT = "Choose a workload and a load profile (the target is in the sidebar), then press Run benchmark."
snap = run_panel("bench", BenchmarkConfig, values, "Run benchmark", JobKind.BENCHMARK, HINT, live_progress)
result = snap.result
if snap.state == JobState.CANCELLED:
    done = sum(r.summary.completed + r.summary.failed for r in result.runs)
    stopped = sum(r.summary.cancelled for r in result.runs)
    st.warning(
        f"Stopped: the figures cover the {done} requests that finished before the stop; "
        f"the {stopped} in flight then were cancelled and are not counted."
    )
if not result.valid:
    st.error("The client could not keep up: these latencies are not the server's. See the self-check below.")
run_summaries(result)
result_charts(result)
with st.expander("Console summary, warnings and self-check"):
    st.code(format_result(result), language=None)
downloads(result, "bench")
saved_note(result, snap.save_error)
