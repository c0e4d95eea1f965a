"""A readiness report, a benchmark result or an engine study as one self-contained HTML page, for a review.

People look at charts rather than read tables, so the page draws the run: TTFT and TPOT
distributions with the summary's p50/p95/p99, output throughput over time, the server's
/metrics timeline and the resources, next to everything the Markdown export shows (the
verdict, the checks with findings and fixes, the key metrics with intervals, the
environment and the run conditions).

The file must open anywhere, offline, and be safe to open: inline CSS and inline SVG
only, no script, font, image or link, and a Content-Security-Policy that forbids every
fetch, so even a slip in a later change cannot reach the network. Every string from the
document is escaped (`reports.html_parts`): a report can hold hostile text.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from reports.benchmark_result import BenchmarkResult, RunDoc
from reports.check_result import Category, CheckResult, CheckStatus
from reports.figures import resource_figures, run_figures, timeline_figures
from reports.html_parts import Markup, code, figure_html, flatten, listing, pairs, size, status_badge, table, with_ci
from reports.markdown import figure
from reports.readiness_report import ReadinessReport
from reports.study_export import study_html_body
from reports.study_report import StudyReport

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:1.5rem;
color:#222;line-height:1.4}
h1{margin:.2rem 0 1rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
thead th{background:#f4f4f4}table.pairs th{background:#fafafa;font-weight:600;white-space:nowrap}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem}
pre{background:#f6f6f6;padding:.5rem;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
.verdict{display:inline-block;padding:.3rem .9rem;border-radius:.4rem;color:#fff;font-weight:700;font-size:1.3rem}
.badge{display:inline-block;padding:0 .4rem;border-radius:.3rem;color:#fff;font-weight:600;font-size:.8rem}
.v-READY,.st-PASS,.v-VALID{background:#2e7d32}.v-READY_WITH_WARNINGS,.st-WARN{background:#b26a00}
.v-NOT_READY,.st-FAIL,.v-INVALID{background:#c62828}.v-INCOMPLETE,.st-ERROR{background:#6a1b9a}
.st-SKIP{background:#757575}.v-CANCELLED{background:#b26a00}
.note{color:#555;font-style:italic}.warn{color:#8a4b00}
.figures{display:flex;flex-wrap:wrap;gap:1rem}.figure{margin:0;max-width:522px}figcaption{font-size:.8rem;color:#555}
svg.chart{max-width:100%;height:auto;background:#fff;border:1px solid #eee}.wide{overflow-x:auto}
"""
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
DEFINITIONS = (
    "TTFT: first streamed content - send. TPOT: (E2E - TTFT) / (output tokens - 1). "
    "ITL: gap between content chunks. E2E: last byte - send. Percentiles over successful "
    "requests; [low, high] is the bootstrap 95% interval."
)


def to_html(doc: ReadinessReport | BenchmarkResult | StudyReport) -> str:
    """The whole page for a readiness report, a benchmark result or an engine study (see the module docstring)."""
    if isinstance(doc, StudyReport):
        return _page(f"Preflight engine study: {doc.study}", study_html_body(doc))
    if isinstance(doc, ReadinessReport):
        return _page(f"Preflight readiness: {doc.verdict.value}", _readiness(doc))
    return _page(f"Preflight benchmark: {doc.endpoint.model}", _benchmark_page(doc))


def _page(title: str, body: list[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{escape(title)}</title><style>{CSS}</style></head>'
        "<body>" + "\n".join(body) + "</body></html>\n"
    )


def _verdict(label: str, css: str) -> Markup:
    return Markup(f'<span class="verdict v-{escape(css)}">{escape(label)}</span>')


def _readiness(report: ReadinessReport) -> list[str]:
    t = report.target
    tally = ", ".join(f"{n} {s.value}" for s, n in report.status_counts().items() if n)
    overview = [
        ("Target", f"{t.base_url} ({t.kind}), {t.api} API, API key {'set' if t.api_key_set else 'not set'}"),
        ("Model", t.model),
        ("Weight format", t.weight_format),
        ("SLO profile", f"{report.slo.name} ({report.slo.source})"),
        ("Exposure", report.exposure.value),
        ("Checks", tally or "none"),
        ("Categories", ", ".join(c.value for c in report.categories)),
        (
            "Ran",
            f"{report.started_at.isoformat(timespec='seconds')} to "
            f"{report.finished_at.isoformat(timespec='seconds')} with Preflight {report.tool.version}",
        ),
        ("Benchmark", report.benchmark_source or "none"),
    ]
    out = [
        f"<h1>Preflight readiness {_verdict(report.verdict.value, report.verdict.value)}</h1>",
        pairs((k, v) for k, v in overview if v is not None),
        listing(report.notes, "warn"),
    ]
    out += _checks(report.checks)
    server = [
        "<h2>Server /metrics during the load</h2>",
        _figures([figure_html(f) for f in timeline_figures(report.metrics_timeline)]),
    ]
    if report.benchmark is None:
        out += ["<h2>Benchmark</h2>", '<p class="note">This report holds no benchmark: no load was measured.</p>']
        out += server
    else:
        out += _benchmark_sections(report.benchmark, server)
    out += _report_environment(report)
    return out


def _checks(checks: list[CheckResult]) -> list[str]:
    """One table per category, then the evidence of every line that is not PASS."""
    out = ["<h2>Checks</h2>"]
    if not checks:
        return [*out, '<p class="note">No check ran.</p>']
    for category in Category:
        rows = [r for r in checks if r.category == category]
        if rows:
            out += [
                f"<h3>{escape(category.value.capitalize())}</h3>",
                table(
                    ("Status", "Check", "Value", "Limit", "Finding", "Remediation"),
                    [
                        (
                            status_badge(r.status),
                            Markup(f"{escape(r.title)}<br>{code(r.id)}"),
                            figure(r.value, r.unit),
                            figure(r.threshold, r.unit),
                            r.message,
                            r.remediation if r.status != CheckStatus.PASS else None,
                        )
                        for r in rows
                    ],
                    "checks",
                ),
            ]
    findings = [r for r in checks if r.status != CheckStatus.PASS and (r.evidence or r.reference)]
    if findings:
        out.append("<h3>Evidence</h3>")
    for r in findings:
        ref = f"<p>Reference: {escape(r.reference)}</p>" if r.reference else ""
        evidence = f"<pre>{escape(chr(10).join(r.evidence))}</pre>" if r.evidence else ""
        out.append(f"<h4>{status_badge(r.status)} {code(r.id)}: {escape(r.title)}</h4>{ref}{evidence}")
    return out


def _report_environment(report: ReadinessReport) -> list[str]:
    out = [
        "<h2>Environment</h2>",
        pairs(flatten(report.environment))
        if report.environment
        else '<p class="note">No environment was recorded.</p>',
    ]
    limits = {k: v for k, v in report.slo.model_dump(exclude={"kind", "schema_version"}).items() if v is not None}
    out += ["<h3>SLO profile</h3>", pairs(flatten(limits))]
    declared = {k: v for k, v in report.declared.model_dump().items() if v is not None}
    if declared:
        out += ["<h3>Declared by the operator</h3>", pairs(flatten(declared))]
    if report.plan:
        out += ["<details><summary>Plan handed to the checklist</summary>", pairs(flatten(report.plan)), "</details>"]
    return out


def _benchmark_page(result: BenchmarkResult) -> list[str]:
    state = "INVALID" if not result.valid else "CANCELLED" if result.cancelled else "VALID"
    overview = [
        (
            "Endpoint",
            f"{result.endpoint.base_url}, {result.endpoint.api} API, API key "
            f"{'set' if result.endpoint.api_key_set else 'not set'}",
        ),
        ("Model", result.endpoint.model),
        ("Workload", result.workload),
        (
            "Ran",
            f"{result.started_at.isoformat(timespec='seconds')} to "
            f"{result.finished_at.isoformat(timespec='seconds')} with Preflight {result.tool.version}",
        ),
    ]
    return [f"<h1>Preflight benchmark {_verdict(state, state)}</h1>", pairs(overview), *_benchmark_sections(result)]


def _benchmark_sections(result: BenchmarkResult, server: Sequence[str] = ()) -> list[str]:
    """Key metrics, one block of charts per run, the `server` section (a report's /metrics timeline, beside the
    load that produced it), resources and run conditions: shared by both documents."""
    out = ["<h2>Key metrics</h2>"]
    if not result.valid:
        reasons = [reason for run in result.runs for reason in run.self_check.reasons]
        out.append(
            f'<p class="warn"><strong>INVALID run:</strong> the load generator could not keep up, so these '
            f"figures are not trusted. {escape('; '.join(reasons))}</p>"
        )
    out.append(listing(result.warnings, "warn"))
    if not result.runs:
        return [*out, '<p class="note">The benchmark has no runs: nothing was measured.</p>', *server]
    out += [_key_metrics(result.runs), f'<p class="note">{escape(DEFINITIONS)}</p>']
    if result.sweep is not None:
        s = result.sweep
        out.append(
            pairs(
                [
                    ("Highest rate meeting the SLO", figure(s.max_rate_meeting_slo, "req/s")),
                    ("Sweep stopped", s.stopped or "no"),
                    ("Attainment required", f"{s.attainment:.0%}"),
                ]
            )
        )
    for run in result.runs:
        out += _run_block(run)
    out += server
    out += [
        "<h2>Resources</h2>",
        _resource_peaks(result),
        _figures([figure_html(f) for f in resource_figures(result.resources)]),
        _run_conditions(result),
    ]
    return out


def _key_metrics(runs: list[RunDoc]) -> Markup:
    """Metrics as rows, runs as columns (a sweep reads across)."""
    rows: list[tuple[str, ...]] = [
        (
            "Requests completed / failed / cancelled",
            *(f"{r.summary.completed} / {r.summary.failed} / {r.summary.cancelled}" for r in runs),
        ),
        ("Duration", *(figure(r.summary.duration_s, "s") for r in runs)),
        ("Request throughput", *(figure(r.summary.request_throughput, "req/s") for r in runs)),
        ("Output throughput", *(figure(r.summary.output_throughput, "tok/s") for r in runs)),
        ("Peak output throughput (1 s)", *(figure(r.summary.peak_output_throughput, "tok/s") for r in runs)),
        ("Total token throughput", *(figure(r.summary.total_token_throughput, "tok/s") for r in runs)),
        ("Goodput", *(figure(r.summary.request_goodput, "req/s") for r in runs)),
        ("TTFT p50", *(with_ci(r.summary.p50_ttft_ms, r.summary.p50_ttft_ms_ci95, "ms") for r in runs)),
        ("TTFT p95", *(figure(r.summary.p95_ttft_ms, "ms") for r in runs)),
        ("TTFT p99", *(with_ci(r.summary.p99_ttft_ms, r.summary.p99_ttft_ms_ci95, "ms") for r in runs)),
        ("TPOT p50", *(with_ci(r.summary.p50_tpot_ms, r.summary.p50_tpot_ms_ci95, "ms") for r in runs)),
        ("TPOT p95", *(figure(r.summary.p95_tpot_ms, "ms") for r in runs)),
        ("TPOT p99", *(with_ci(r.summary.p99_tpot_ms, r.summary.p99_tpot_ms_ci95, "ms") for r in runs)),
        (
            "ITL p50 / p99",
            *(f"{figure(r.summary.p50_itl_ms, 'ms')} / {figure(r.summary.p99_itl_ms, 'ms')}" for r in runs),
        ),
        (
            "E2E p50 / p99",
            *(f"{figure(r.summary.p50_e2el_ms, 'ms')} / {figure(r.summary.p99_e2el_ms, 'ms')}" for r in runs),
        ),
        ("Mean queue time", *(figure(r.summary.mean_queue_ms, "ms") for r in runs)),
        ("Schedule lag p99", *(figure(r.summary.p99_schedule_lag_ms, "ms") for r in runs)),
        ("Client kept up", *("yes" if r.self_check.valid else "no: " + "; ".join(r.self_check.reasons) for r in runs)),
    ]
    if any(r.meets_slo is not None for r in runs):
        rows.append(
            (
                "Meets the SLO",
                *(
                    "-" if r.meets_slo is None else "yes" if r.meets_slo else f"no: {r.why_not or 'see the figures'}"
                    for r in runs
                ),
            )
        )
    return table(("Metric", *(r.profile for r in runs)), rows, "metrics")


def _run_block(run: RunDoc) -> list[str]:
    s = run.summary
    out = [f"<h2>Run {code(run.profile)}</h2>"]
    if run.stopped_early or run.cancelled:
        out.append(f'<p class="warn">Stopped early: {escape(run.stopped_early or "cancelled")}</p>')
    out.append(listing(s.warnings, "warn"))
    out.append(_figures([figure_html(f) for f in run_figures(run)]))
    if s.errors_by_kind:
        out += ["<h3>Failures</h3>", table(("Kind", "Requests"), sorted(s.errors_by_kind.items()))]
    if s.first_errors:
        out.append(table(("Request", "Kind", "Excerpt"), [(e.request_id, e.kind, e.excerpt) for e in s.first_errors]))
    return out


def _resource_peaks(result: BenchmarkResult) -> Markup:
    r = result.resources.summary
    peaks = [
        ("Samples", r.sample_count),
        ("Peak host CPU", figure(r.peak_host_cpu_percent, "%")),
        ("Peak host RAM used", size(r.peak_host_ram_used_bytes)),
        ("Peak server RSS", size(r.peak_proc_rss_bytes)),
        ("Mean server CPU (% of one core)", figure(r.mean_proc_cpu_percent, "%")),
    ]
    peaks += [
        (
            f"GPU {g.index} {g.name}",
            f"peak {size(g.peak_memory_used_bytes)}, mean utilisation {figure(g.mean_utilization_percent, '%')}",
        )
        for g in r.gpus
    ]
    return pairs(peaks)


def _run_conditions(result: BenchmarkResult) -> Markup:
    """Everything needed to run the benchmark again: target, endpoint, workload, client machine and config."""
    parts = [
        "<h2>Run conditions</h2>",
        "<h3>Target</h3>",
        pairs(flatten(result.target.model_dump())),
        "<h3>Endpoint</h3>",
        pairs(flatten(result.endpoint.model_dump())),
        "<h3>Client machine</h3>",
        pairs(flatten(result.client.model_dump())),
        "<h3>Configuration</h3>",
        pairs(flatten(result.config)),
    ]
    if result.server_log_tail:
        parts += [
            "<details><summary>End of the server log</summary>",
            f"<pre>{escape(result.server_log_tail)}</pre></details>",
        ]
    return Markup("".join(parts))


def _figures(items: list[Markup]) -> Markup:
    return Markup('<div class="figures">' + "".join(items) + "</div>")
