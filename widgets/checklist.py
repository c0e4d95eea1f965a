"""The Checklist page's widgets: the judging inputs, live progress, the verdict and the results.

Every value goes to `checks.readiness.config.ChecklistConfig`, which validates it; the
target is the sidebar's (widgets.target), the same one the Benchmark page measures.
"""

from __future__ import annotations

import streamlit as st

from checks.jobs import Job, JobState
from reports.check_result import Category, CheckResult, CheckStatus, Exposure
from reports.markdown import figure
from reports.readiness_report import ReadinessReport
from reports.verdict import Verdict
from widgets.checklist_files import benchmark_source, plan_input, slo_input

STATUS_COLOURS = {
    CheckStatus.PASS: "green",
    CheckStatus.WARN: "orange",
    CheckStatus.FAIL: "red",
    CheckStatus.SKIP: "gray",
    CheckStatus.ERROR: "violet",
}
VERDICT_TEXT = {
    Verdict.READY: "READY: every check passed or does not apply.",
    Verdict.READY_WITH_WARNINGS: "READY WITH WARNINGS: nothing failed; read the warnings before launch.",
    Verdict.NOT_READY: "NOT READY: at least one check failed.",
    Verdict.INCOMPLETE: "INCOMPLETE: a required check could not measure, so readiness is unknown.",
}


def judging_inputs() -> dict:
    """SLO profile, exposure, categories, the files to judge by, declared limits and the size of the measured run."""
    c1, c2 = st.columns(2)
    with c1:
        slo = slo_input()
    exposure = c2.radio(
        "Exposure",
        [e.value for e in Exposure],
        horizontal=True,
        key="check_exposure",
        help="local: this machine only; internal: a private network; public: the internet",
    )
    chosen = st.multiselect(
        "Categories", [c.value for c in Category], default=[c.value for c in Category], key="check_categories"
    )
    files = {**benchmark_source(), **plan_input()}
    with st.expander("Declared limits and load size"):
        d1, d2, d3 = st.columns(3)
        rpm = d1.number_input("Rate limit, requests/min (0 = not declared)", 0, 1_000_000, 0, key="check_rpm")
        queue = d2.number_input("Queue limit (0 = not declared)", 0, 100_000, 0, key="check_queue")
        qps = d3.number_input("Target QPS (0 = none; runs a sweep)", 0.0, 100_000.0, 0.0, key="check_qps")
        k1, k2 = st.columns(2)
        streams = k1.number_input("Concurrent streams to hold (0 = not declared)", 0, 100_000, 0, key="check_streams")
        context = k2.number_input("Context tokens per stream (0 = not declared)", 0, 10_000_000, 0, key="check_context")
        l1, l2, l3 = st.columns(3)
        requests = l1.number_input("Measured requests", 1, 100_000, 40, key="check_requests")
        input_len = l2.number_input("Input tokens", 1, 8000, 128, key="check_input_len")
        output_len = l3.number_input("Output tokens", 2, 4000, 64, key="check_output_len")
    return {
        "slo": slo,
        "exposure": exposure,
        "only": chosen,
        "rate_limit_rpm": int(rpm) or None,
        "max_queue": int(queue) or None,
        "target_qps": qps or None,
        "concurrency": int(streams) or None,
        "context_tokens": int(context) or None,
        "requests": int(requests),
        "input_len": int(input_len),
        "output_len": int(output_len),
        **files,
    }


@st.fragment(run_every=1.0)
def live_progress(job: Job) -> None:
    snap = job.snapshot()
    if snap.state != JobState.RUNNING:
        st.rerun()  # the whole page redraws with the report
    p = snap.progress
    done = 0.0 if p is None or not p.total else min(1.0, p.done / p.total)
    now = f"; now: {p.current}" if p is not None and p.current else ""
    st.progress(done, text=f"{snap.status}{now} ({snap.elapsed_s:.0f} s)")
    if st.button("Stop", key="check_stop"):
        job.cancel()


def verdict_banner(report: ReadinessReport) -> None:
    tally = ", ".join(f"{n} {s.value}" for s, n in report.status_counts().items() if n)
    text = f"**{VERDICT_TEXT[report.verdict]}** ({tally})"
    {
        Verdict.READY: st.success,
        Verdict.READY_WITH_WARNINGS: st.warning,
        Verdict.NOT_READY: st.error,
        Verdict.INCOMPLETE: st.error,
    }[report.verdict](text)
    for note in report.notes:
        st.caption(note)


def _line(r: CheckResult) -> None:
    measured = "" if r.value is None else f" · {figure(r.value, r.unit)}"
    limit = "" if r.threshold is None else f" (limit {figure(r.threshold, r.unit)})"
    st.markdown(f":{STATUS_COLOURS[r.status]}-badge[{r.status.value}] **{r.title}**{measured}{limit}  \n{r.message}")
    if r.evidence or r.remediation or r.reference:
        with st.expander(f"Evidence and fix: {r.id}"):
            if r.remediation:
                st.markdown(f"**Fix:** {r.remediation}")
            if r.reference:
                st.caption(f"Reference: {r.reference}")
            if r.evidence:
                st.code("\n".join(r.evidence), language=None)


def results_by_category(report: ReadinessReport) -> None:
    for category in Category:
        rows = [r for r in report.checks if r.category == category]
        if not rows:
            continue
        seen = {r.status for r in rows}
        order = (CheckStatus.FAIL, CheckStatus.ERROR, CheckStatus.WARN)
        worst = next((s for s in order if s in seen), CheckStatus.PASS)
        st.subheader(f"{category.value.capitalize()} :{STATUS_COLOURS[worst]}-badge[{worst.value}]")
        for r in rows:
            _line(r)
