"""The fixed-width console block a benchmark prints (label column, value column, a rule per section).

Pure formatting of a `BenchmarkResult` (from `run_benchmark` or a saved file); the CLI
prints it and tests compare it. Not-measured figures print as '-', never 0.
"""

from __future__ import annotations

from pydantic import BaseModel

from reports.benchmark_result import BenchmarkResult, RunDoc
from reports.summary import BenchmarkSummary

WIDTH = 60

SECTIONS: list[tuple[str, list[tuple[str, str, str]]]] = [
    (
        "Requests",
        [
            ("Completed", "completed", "{:d}"),
            ("Failed", "failed", "{:d}"),
            ("Cancelled", "cancelled", "{:d}"),
            ("Abandoned by the load (--cancel-rate)", "abandoned", "{:d}"),
            ("Duration (s)", "duration_s", "{:.2f}"),
            ("Request throughput (req/s)", "request_throughput", "{:.2f}"),
            ("Request goodput (req/s)", "request_goodput", "{:.2f}"),
        ],
    ),
    (
        "Tokens",
        [
            ("Total input tokens", "total_input_tokens", "{:d}"),
            ("Input tokens from the prefix cache", "cached_input_tokens", "{:d}"),
            ("Total output tokens", "total_output_tokens", "{:d}"),
            ("Output throughput (tok/s)", "output_throughput", "{:.1f}"),
            ("Peak output throughput (tok/s, 1 s)", "peak_output_throughput", "{:.1f}"),
            ("Total token throughput (tok/s)", "total_token_throughput", "{:.1f}"),
        ],
    ),
    *[
        (
            title,
            [
                (f"Mean {short} (ms)", f"mean_{key}_ms", "{:.2f}"),
                (f"Median {short} (ms)", f"median_{key}_ms", "{:.2f}"),
                (f"P90 {short} (ms)", f"p90_{key}_ms", "{:.2f}"),
                (f"P99 {short} (ms)", f"p99_{key}_ms", "{:.2f}"),
            ],
        )
        for title, short, key in [
            ("Time to first token", "TTFT", "ttft"),
            ("Time per output token (excl. 1st token)", "TPOT", "tpot"),
            ("Inter-chunk latency", "ITL", "itl"),
            ("End-to-end latency", "E2E", "e2el"),
        ]
    ],
]


def _value(part: BaseModel, name: str, fmt: str) -> str:
    """A figure of a summary or self-check by field name (the SECTIONS table names them); '-' when None."""
    value = getattr(part, name)
    return "-" if value is None else fmt.format(value)


def _ci(summary: BenchmarkSummary, name: str) -> str:
    ci = getattr(summary, name)
    return "-" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def format_run(run: RunDoc) -> str:
    """One run's summary block."""
    s = run.summary
    lines = [f" Profile: {run.profile} ".center(WIDTH, "=")]
    for title, rows in SECTIONS:
        lines.append(f" {title} ".center(WIDTH, "-"))
        lines += [f"{label:<44}{_value(s, key, fmt):>16}" for label, key, fmt in rows]
    lines.append(" 95% confidence (bootstrap) ".center(WIDTH, "-"))
    for label, key in (
        ("P50 TTFT (ms)", "p50_ttft_ms_ci95"),
        ("P99 TTFT (ms)", "p99_ttft_ms_ci95"),
        ("P50 TPOT (ms)", "p50_tpot_ms_ci95"),
        ("P99 TPOT (ms)", "p99_tpot_ms_ci95"),
    ):
        lines.append(f"{label:<36}{_ci(s, key):>24}")
    if s.ttft_by_turn:
        lines.append(" TTFT by turn (ms) ".center(WIDTH, "-"))
        lines.append(f"{'Turn':<8}{'requests':>10}{'mean input tok':>16}{'median':>12}{'p90':>14}")
        for t in s.ttft_by_turn:
            tokens = "-" if t.mean_input_tokens is None else f"{t.mean_input_tokens:.0f}"
            median = "-" if t.median_ttft_ms is None else f"{t.median_ttft_ms:.1f}"
            p90 = "-" if t.p90_ttft_ms is None else f"{t.p90_ttft_ms:.1f}"
            lines.append(f"{t.turn:<8}{t.requests:>10}{tokens:>16}{median:>12}{p90:>14}")
    check = run.self_check
    lines.append(" Client self-check ".center(WIDTH, "-"))
    lines.append(f"{'Valid':<44}{'yes' if check.valid else 'NO':>16}")
    for label, key in (
        ("Schedule lag p99 (ms)", "schedule_lag_p99_ms"),
        ("Event-loop lag p99 (ms)", "loop_lag_p99_ms"),
    ):
        lines.append(f"{label:<44}{_value(check, key, '{:.2f}'):>16}")
    lines += [f"  ! {reason}" for reason in check.reasons]
    for w in run.workers:
        fate = f", died: {w.died}" if w.died else ""
        lines.append(
            f"  worker {w.worker}: {w.records} records, clock offset {w.clock_offset_ms:+.2f} ms "
            f"(probe round trip {w.clock_round_trip_ms:.2f} ms){fate}"
        )
    if run.meets_slo is not None:
        lines.append(f"{'Meets SLO':<44}{'yes' if run.meets_slo else 'no':>16}")
        if run.why_not:
            lines.append(f"  - {run.why_not}")
    if run.stopped_early:
        lines.append(f"  ! stopped early: {run.stopped_early}")
    for error in s.first_errors:
        lines.append(f"  x request {error.request_id}: {error.kind}: {error.excerpt}")
    lines += [f"  * {w}" for w in s.warnings]
    lines.append("=" * WIDTH)
    return "\n".join(lines)


def network_lines(result: BenchmarkResult) -> list[str]:
    """The round trip beside TTFT, and TTFT without it as a separately labelled extra figure."""
    network = result.network
    if network is None:
        return []
    rtt = network.rtt_ms
    if rtt is None:
        errors = network.before.errors or (network.after.errors if network.after else [])
        return [f"Network: round trip not measured ({errors[0] if errors else 'no sample'})"]
    probes = [p for p in (network.before, network.after) if p is not None]
    first = [p.first_byte_median_ms for p in probes if p.first_byte_median_ms is not None]
    lines = [
        f"Network: round trip {rtt:.2f} ms (fastest TCP handshake of {sum(len(p.tcp_connect_ms) for p in probes)}, "
        "before and after the runs)" + (f"; a minimal request's first byte {min(first):.2f} ms" if first else "")
    ]
    for run in result.runs:
        ttft = run.summary.median_ttft_ms
        if ttft is not None:
            lines.append(
                f"  {run.profile}: median TTFT {ttft:.1f} ms, of which the network's round trip is "
                f"{min(rtt, ttft):.2f} ms; less the network (extra figure): {max(0.0, ttft - rtt):.1f} ms"
            )
    return lines


def metrics_lines(result: BenchmarkResult) -> list[str]:
    """What the server's own /metrics said during the load, and after an abandoning load whether it recovered."""
    timeline = result.metrics
    if timeline is None:
        return []
    if timeline.source is None:
        return [f"Server metrics: not read ({timeline.note or 'the server metrics were not recognised'})"]
    lines = ["Server metrics: " + timeline.describe()[0], *(f"  {line}" for line in timeline.describe()[1:])]
    if result.metrics_follow_up is not None:
        lines.append("  " + result.metrics_follow_up.line())
    return lines


def format_result(result: BenchmarkResult) -> str:
    """The whole console output for a result document."""
    endpoint, target = result.endpoint, result.target
    kind = f"bundled, {target.decode} decode" if target.kind == "bundled" and target.decode else target.kind
    head = [f"Target: {endpoint.base_url} ({kind}), model {endpoint.model}, {endpoint.api} API"]
    if target.kind == "bundled" and target.eager_reason:
        head.append(f"Eager decode: {target.eager_reason}")
    head.append(f"Workload: {result.workload}")
    if result.slo is not None:
        limits = result.slo.model_dump(exclude_none=True)
        head.append("SLO: " + ", ".join(f"{name} <= {limit:g}" for name, limit in limits.items()))
    blocks = [format_run(run) for run in result.runs]
    tail: list[str] = []
    if result.sweep is not None:
        best = result.sweep.max_rate_meeting_slo
        tail.append("Sweep: highest rate meeting the SLO: " + ("-" if best is None else f"{best:.2f} req/s"))
        if result.sweep.stopped:
            tail.append(f"Sweep ended early: {result.sweep.stopped}")
    tail += network_lines(result)
    tail += metrics_lines(result)
    tail += [f"* {w}" for w in result.warnings]
    if not result.valid:
        tail.append("! INVALID: the client could not keep up; these latencies are not the server's (see self-check)")
    return "\n".join([*head, *blocks, *tail])
