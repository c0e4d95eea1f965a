"""The Benchmark page's widgets: the target / workload / load form, live progress and result views.

Kept beside `widgets.common` so that app_pages/benchmark.py stays a short running order; every
value is handed to `checks.load.benchmark.BenchmarkConfig`, which validates it.
"""

import altair as alt
import pandas as pd
import streamlit as st

from checks.jobs import Job, JobState
from checks.load.benchmark import BenchmarkConfig
from checks.load.calibration import new_step_log_path
from checks.load.console import metrics_lines, network_lines
from checks.load.frames import (
    request_frame,
    server_metrics_frame,
    summary_frame,
    sweep_frame,
    throughput_frame,
    throughput_window_s,
)
from checks.load.scenarios import SCENARIOS
from checks.load.traces import DEFAULT_BLOCK_TOKENS
from checks.readiness.slo import goodput_slo, load_profile, profile_names
from reports.benchmark_result import BenchmarkResult
from widgets.uploads import save_upload

PROFILES = ["sync", "concurrency", "constant", "poisson", "sweep"]


SOURCES = ["Synthetic", "Scenario", "Prompt file", "Recorded trace"]


def workload_inputs() -> dict:
    source = st.radio("Workload", SOURCES, horizontal=True, key="bench_source")
    if source == "Scenario":
        name = st.selectbox(
            "Scenario", list(SCENARIOS), key="bench_scenario", format_func=lambda n: f"{n}: {SCENARIOS[n].description}"
        )
        return {"scenario": name}
    if source == "Recorded trace":
        return _trace_inputs()
    if source == "Prompt file":
        upload = st.file_uploader("JSONL or ShareGPT JSON", type=["jsonl", "json"], key="bench_dataset")
        files = {"dataset": "" if upload is None else str(save_upload(upload.getvalue(), upload.name))}
        return {**files, **_session_inputs()}
    c1, c2, c3 = st.columns(3)
    return {
        "input_len": int(c1.number_input("Input tokens", 1, 8000, 256, key="bench_input_len")),
        "output_len": int(c2.number_input("Output tokens", 1, 4000, 64, key="bench_output_len")),
        "shared_prefix_len": int(c3.number_input("Shared prefix tokens", 0, 7999, 0, key="bench_prefix")),
        **_session_inputs(),
    }


def _trace_inputs() -> dict:
    """An Azure LLM inference CSV or a Mooncake JSONL, replayed at its recorded times (checks.load.traces)."""
    upload = st.file_uploader(
        "Azure LLM inference trace (CSV) or Mooncake trace (JSONL)", type=["csv", "jsonl"], key="bench_trace"
    )
    c1, c2, c3, c4 = st.columns(4)
    speed = c1.number_input("Replay speed (x)", 0.01, 1000.0, 1.0, key="bench_trace_speed")
    window = c2.number_input("Trace window s (0 = all)", 0.0, 10**7 * 1.0, 0.0, key="bench_trace_window")
    sample = c3.number_input(
        "Keep this share of rows",
        0.001,
        1.0,
        1.0,
        key="bench_trace_sample",
        help=BenchmarkConfig.model_fields["trace_sample"].description,
    )
    block = c4.number_input("Tokens per hash id (Mooncake)", 1, 1 << 20, DEFAULT_BLOCK_TOKENS, key="bench_trace_block")
    return {
        "trace": "" if upload is None else str(save_upload(upload.getvalue(), upload.name)),
        "trace_speed": speed,
        "trace_window_s": window or None,
        "trace_sample": sample,
        "trace_block_tokens": int(block),
    }


def _session_inputs() -> dict:
    """Multi-turn sessions: each turn resends the history with the server's answers (checks.load.loadgen.Sessions)."""
    c1, c2 = st.columns(2)
    turns = int(c1.number_input("Turns per conversation (1 = single requests)", 1, 256, 1, key="bench_turns"))
    think = c2.number_input("Think time between turns, ms", 0.0, 600000.0, 0.0, key="bench_think", disabled=turns == 1)
    return {"turns": turns, "think_time_ms": think if turns > 1 else 0.0}


def load_inputs() -> dict:
    c1, c2, c3, c4 = st.columns(4)
    replay = st.session_state.get("bench_source") == "Recorded trace"
    kinds = ["trace", *PROFILES] if replay else PROFILES  # a trace brings its own arrival times
    # its own key under a trace, so that choosing a trace starts on "trace" whatever was picked before
    kind = c1.selectbox(
        "Load profile", kinds, index=0 if replay else 1, key="bench_trace_profile" if replay else "bench_profile"
    )
    profile = kind
    if kind == "concurrency":
        profile = f"concurrency:{int(c2.number_input('Concurrency', 1, 1024, 4, key='bench_concurrency'))}"
    elif kind in ("constant", "poisson"):
        profile = f"{kind}:{c2.number_input('Requests/s', 0.01, 10000.0, 1.0, key='bench_rate'):g}"
    requests = int(c3.number_input("Requests (per run)", 1, 100000, 20, key="bench_requests"))
    warmup = int(c4.number_input("Warm-up requests", 0, 1000, 1, key="bench_warmup"))
    slo_inputs = _slo_inputs()
    return {"profile": profile, "requests": requests, "warmup_requests": warmup, **slo_inputs, **_client_inputs()}


def server_inputs(target: dict) -> dict:
    """A bundled target's server can keep its step log (`checks bench --step-log`): what each forward pass
    cost, which the Plan page's "Calibrate from a run" prices passes from. On by default: a log is ~1 MB for
    a 40-request run at 16 streams, and the newest 50 are kept."""
    if not str(target.get("target", "")).startswith("bundled"):
        return {}
    keep = st.checkbox(
        "Keep the server's step log",
        value=True,
        key="bench_step_log",
        help=BenchmarkConfig.model_fields["step_log"].description,
    )
    return {"step_log": str(new_step_log_path())} if keep else {}


def _client_inputs() -> dict:
    """What the client does beyond sending: abandon some requests mid-answer, or split itself over Ray workers."""
    with st.expander("Cancellations and load-generator workers"):
        c1, c2, c3 = st.columns(3)
        rate = c1.number_input("Abandon this % of requests", 0.0, 100.0, 0.0, key="bench_cancel_pct")
        after = c2.number_input("... this many ms after sending", 1.0, 600000.0, 500.0, key="bench_cancel_after")
        workers = c3.number_input(
            "Workers (Ray processes)", 1, 256, 1, key="bench_workers", help="more than 1 starts a local Ray instance"
        )
    return {"cancel_rate": rate / 100, "cancel_after_ms": after, "workers": int(workers)}


SLO_FIELDS = {"ttft": "bench_slo_ttft", "tpot": "bench_slo_tpot", "e2e": "bench_slo_e2e"}
NO_PROFILE = "none (no goodput)"


def _apply_slo_profile() -> None:
    """Fill the per-request limits from the chosen profile (checks.readiness.slo.goodput_slo: the limits the
    checklist's goodput uses too); 'none' clears them."""
    name = st.session_state.get("bench_slo_profile", "chat")
    slo = None if name == NO_PROFILE else goodput_slo(load_profile(name))
    for kind, key in SLO_FIELDS.items():
        st.session_state[key] = float(getattr(slo, f"{kind}_ms", None) or 0.0) if slo else 0.0


def _slo_inputs() -> dict:
    """Goodput's per-request limits, defaulting to the chat profile's, so a first run has a pass/fail figure."""
    if "bench_slo_profile" not in st.session_state:
        st.session_state["bench_slo_profile"] = "chat"
        _apply_slo_profile()
    s0, s1, s2, s3 = st.columns(4)
    s0.selectbox(
        "SLO profile (goodput limits)",
        [*profile_names(), NO_PROFILE],
        key="bench_slo_profile",
        on_change=_apply_slo_profile,
    )
    ttft = s1.number_input("SLO TTFT ms (0 = none)", 0.0, 600000.0, key=SLO_FIELDS["ttft"])
    tpot = s2.number_input("SLO TPOT ms (0 = none)", 0.0, 600000.0, key=SLO_FIELDS["tpot"])
    e2e = s3.number_input("SLO E2E ms (0 = none)", 0.0, 3600000.0, key=SLO_FIELDS["e2e"])
    return {"slo_ttft_ms": ttft or None, "slo_tpot_ms": tpot or None, "slo_e2e_ms": e2e or None}


@st.fragment(run_every=1.0)
def live_progress(job: Job) -> None:
    snap = job.snapshot()
    if snap.state != JobState.RUNNING:
        st.rerun()  # the whole page redraws with the result
    p = snap.progress
    done = 0.0 if p is None or not p.total else min(1.0, (p.completed + p.failed) / p.total)
    st.progress(done, text=f"{snap.status} ({snap.elapsed_s:.0f} s)")
    if p is not None:
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Completed", p.completed)
        c2.metric("Failed", p.failed)
        c3.metric("In flight", p.in_flight)
        c4.metric("Output tokens", p.output_tokens)
    if st.button("Stop", key="bench_stop"):
        job.cancel()


def latency_cdf(frame: pd.DataFrame, metric: str, title: str, colour: str = "run") -> alt.Chart:
    """The share of requests at or below each latency: tails and shifts read off it better than off bins."""
    return (
        alt.Chart(frame.dropna(subset=[metric]))
        .transform_window(
            cdf="cume_dist()",
            sort=[{"field": metric}],
            groupby=[colour],
        )
        .mark_line(interpolate="step-after")
        .encode(
            x=alt.X(f"{metric}:Q", title=title),
            y=alt.Y("cdf:Q", title="share of requests", axis=alt.Axis(format="%")),
            color=alt.Color(f"{colour}:N", title=None),
        )
        .properties(title=f"{title.split(' (')[0]}: share of requests at or below", height=240)
    )


def benchmark_charts(result: BenchmarkResult) -> dict[str, alt.Chart]:
    """Every chart of a result by name: histograms and CDFs of TTFT and TPOT, throughput over time, and latency
    against load for a sweep; every axis says its unit. Built apart from the layout so that a test reads their
    specs. No colour of text or background is set here: Streamlit's theme colours them, light or dark."""
    requests = request_frame(result)
    charts: dict[str, alt.Chart] = {}
    for metric, title in (("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)")):
        charts[f"{metric}_histogram"] = (
            alt.Chart(requests.dropna(subset=[metric]))
            .mark_bar()
            .encode(
                x=alt.X(metric, bin=alt.Bin(maxbins=30), title=title),
                y=alt.Y("count()", title="requests"),
                color=alt.Color("run:N", title=None),
            )
            .properties(title=f"{title.split(' (')[0]} distribution", height=240)
        )
        charts[f"{metric}_cdf"] = latency_cdf(requests, metric, title)
    tput = throughput_frame(result, window_s=throughput_window_s(result))
    charts["throughput"] = (
        alt.Chart(tput)
        .mark_line(point=True)
        .encode(
            x=alt.X("t_s", title="time since the first request (s)"),
            y=alt.Y("output_tok_s", title="output tok/s"),
            color=alt.Color("run:N", title=None),
        )
        .properties(title="Output tokens per second", height=240)
    )
    server = server_metrics_frame(result)
    if not server.empty:
        charts["server_metrics"] = (
            alt.Chart(server)
            .mark_line(point=True)
            .encode(
                x=alt.X("t_s", title="time since the run's start (s)"),
                y=alt.Y("value", title=None),
                color=alt.Color("series:N", title=None),
            )
            .properties(title=f"Server metrics ({result.metrics.source} /metrics)", height=240)
        )
    sweep = sweep_frame(result)
    if not sweep.empty:
        melted = sweep.melt("request_rate", ["p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms"], "metric", "ms")
        charts["sweep"] = (
            alt.Chart(melted)
            .mark_line(point=True)
            .encode(
                x=alt.X("request_rate", title="request rate (req/s)"),
                y=alt.Y("ms", title="latency (ms)"),
                color=alt.Color("metric:N", title=None),
            )
            .properties(title="Latency vs load (sweep)", height=260)
        )
    return charts


def result_charts(result: BenchmarkResult) -> None:
    """The result's charts (`benchmark_charts`): TTFT and TPOT side by side, then throughput and the sweep."""
    charts = benchmark_charts(result)
    for col, metric in zip(st.columns(2), ("ttft_ms", "tpot_ms"), strict=True):
        col.altair_chart(charts[f"{metric}_histogram"])
        col.altair_chart(charts[f"{metric}_cdf"])
    st.altair_chart(charts["throughput"])
    if "server_metrics" in charts:
        st.altair_chart(charts["server_metrics"])
    if "sweep" in charts:
        st.altair_chart(charts["sweep"])


def run_summaries(result: BenchmarkResult) -> None:
    """Headline metrics and the latency table of each run (one for a profile, several for a sweep)."""
    for run in result.runs:
        s = run.summary
        st.subheader(run.profile)
        c1, c2, c3, c4 = st.columns(4)
        stopped = f" (+{s.cancelled} stopped in flight)" if s.cancelled else ""  # the live view's "in flight"
        c1.metric("Completed / failed", f"{s.completed} / {s.failed}", help=f"measured requests{stopped}")
        c2.metric("Output tok/s", "-" if s.output_throughput is None else f"{s.output_throughput:.1f}")
        c3.metric("Median TTFT ms", "-" if s.median_ttft_ms is None else f"{s.median_ttft_ms:.0f}")
        c4.metric("Goodput req/s", "-" if s.request_goodput is None else f"{s.request_goodput:.2f}")
        st.dataframe(summary_frame(run), hide_index=True)
    network = network_lines(result) + metrics_lines(result)
    if network:
        st.caption("  \n".join(network))
