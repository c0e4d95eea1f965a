"""A readiness report as Markdown, to paste into a launch review or a pull request.

The verdict comes first, then a table per category: status, what was checked, the
measured value against its limit, and the finding. Evidence and remediation follow
each non-PASS line, because those are what a reviewer acts on. Then the key metrics
with their bootstrap intervals, the machine, and the command that runs the same
checklist again. Pure text from the report: nothing is re-measured, and no secret can
appear that the report does not hold (the command reads a key from PREFLIGHT_TARGET_API_KEY).
"""

from __future__ import annotations

import shlex

from reports.benchmark_result import RunDoc
from reports.check_result import Category, CheckResult, CheckStatus
from reports.readiness_report import MEASURED_HERE, ReadinessReport

STATUS_MARK = {
    CheckStatus.PASS: "✅ PASS",
    CheckStatus.WARN: "⚠️ WARN",
    CheckStatus.FAIL: "❌ FAIL",
    CheckStatus.SKIP: "⏭️ SKIP",
    CheckStatus.ERROR: "🛑 ERROR",
}


def cell(text: object) -> str:
    """Table-safe text: pipes escaped, line breaks folded."""
    return " ".join(str(text).split()).replace("|", "\\|")


def figure(value: object, unit: str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        value = f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return f"{value} {unit}" if unit else str(value)


def _line(r: CheckResult) -> str:
    return (
        f"| {STATUS_MARK[r.status]} | {cell(r.title)} | {cell(figure(r.value, r.unit))} "
        f"| {cell(figure(r.threshold, r.unit))} | {cell(r.message)} |"
    )


def _details(r: CheckResult) -> list[str]:
    out = [f"#### {STATUS_MARK[r.status]} `{r.id}`: {r.title}", "", r.message, ""]
    if r.remediation:
        out += [f"**Fix:** {r.remediation}", ""]
    if r.reference:
        out += [f"Reference: {r.reference}", ""]
    if r.evidence:
        out += ["```", *r.evidence, "```", ""]
    return out


def to_markdown(report: ReadinessReport) -> str:
    t = report.target
    tally = ", ".join(f"{n} {s.value}" for s, n in report.status_counts().items() if n)
    lines = [
        f"# Preflight readiness: **{report.verdict.value}**",
        "",
        f"- Target: {t.base_url} ({t.kind}), model `{t.model}`, {t.api} API, API key "
        + ("set" if t.api_key_set else "not set"),
        f"- SLO profile: `{report.slo.name}` ({cell(report.slo.source)})",
        f"- Exposure: {report.exposure.value}",
        f"- Checks: {tally or 'none'}",
        f"- Ran {report.started_at.isoformat(timespec='seconds')} to {report.finished_at.isoformat(timespec='seconds')}"
        f" with Preflight {report.tool.version}",
        "",
    ]
    lines += [f"> {note}" for note in report.notes]
    for category in Category:
        rows = [r for r in report.checks if r.category == category]
        if not rows:
            continue
        lines += [
            "",
            f"## {category.value.capitalize()}",
            "",
            "| Status | Check | Value | Limit | Finding |",
            "|---|---|---|---|---|",
        ]
        lines += [_line(r) for r in rows]
    findings = [r for r in report.checks if r.status != CheckStatus.PASS]
    if findings:
        lines += ["", "## Findings and evidence", ""]
        for r in findings:
            lines += _details(r)
    lines += _key_metrics(report) + _environment(report)
    key = ["# the target needs its key: export PREFLIGHT_TARGET_API_KEY first"] if report.target.api_key_set else []
    lines += ["", "## Reproduce", "", "```bash", *key, reproduce_command(report), "```"]
    return "\n".join(lines).rstrip() + "\n"


def _ms(value: float | None, ci: tuple[float, float] | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" + (f" ({ci[0]:.0f}-{ci[1]:.0f})" if ci is not None else "")


def _metric_row(run: RunDoc) -> str:
    s = run.summary
    tput = "-" if s.output_throughput is None else f"{s.output_throughput:.1f}"
    cells = [
        cell(run.profile),
        f"{s.completed} / {s.failed}",
        _ms(s.p50_ttft_ms, s.p50_ttft_ms_ci95),
        _ms(s.p95_ttft_ms),
        _ms(s.p99_ttft_ms, s.p99_ttft_ms_ci95),
        _ms(s.p50_tpot_ms, s.p50_tpot_ms_ci95),
        _ms(s.p99_tpot_ms, s.p99_tpot_ms_ci95),
        _ms(s.p99_e2el_ms),
        tput,
    ]
    return "| " + " | ".join(cells) + " |"


def _key_metrics(report: ReadinessReport) -> list[str]:
    bench = report.benchmark
    if bench is None or not bench.runs:
        return []
    state = "" if bench.valid else " **INVALID: the load generator did not keep up**"
    return [
        "",
        f"## Key metrics ({cell(report.benchmark_source or 'measured')}; ms, 95% bootstrap interval){state}",
        "",
        f"Workload: {cell(bench.workload)}",
        "",
        "| Profile | ok / failed | TTFT p50 | TTFT p95 | TTFT p99 | TPOT p50 | TPOT p99 | E2E p99 | out tok/s |",
        "|---|---|---|---|---|---|---|---|---|",
        *(_metric_row(run) for run in bench.runs),
    ]


ENVIRONMENT_LINES = (
    ("cpu_model", "CPU"),
    ("physical_cores", "cores"),
    ("torch_version", "torch"),
    ("driver_version", "NVIDIA driver"),
    ("os", "OS"),
)


def _environment(report: ReadinessReport) -> list[str]:
    env = report.environment
    lines = [f"- {label}: {cell(env[key])}" for key, label in ENVIRONMENT_LINES if env.get(key) is not None]
    if isinstance(env.get("ram_total_bytes"), int):
        lines.append(f"- RAM: {env['ram_total_bytes'] / 2**30:.1f} GiB")
    gpus = [g for g in env.get("gpus") or [] if isinstance(g, dict)]
    lines += [f"- GPU {g.get('index')}: {cell(g.get('name'))}" for g in gpus]
    if report.target.weight_format:
        lines.append(f"- Weight format: {report.target.weight_format}")
    return ["", "## Environment", "", *lines] if lines else []


def reproduce_command(report: ReadinessReport) -> str:
    """The `python -m checks run` that repeats this checklist, from what the report kept."""
    t, d = report.target, report.declared
    target = f"bundled:{t.quant}" if t.kind == "bundled" and t.quant else t.base_url
    args = [
        "python",
        "-m",
        "checks",
        "run",
        "--target",
        target,
        "--slo",
        report.slo.name,
        "--exposure",
        report.exposure.value,
    ]
    if t.kind == "remote" and t.model:
        args += ["--model", t.model]
    if t.api != "chat":
        args += ["--api", t.api]
    if t.kind == "bundled" and t.weights_dir:
        args += ["--weights", t.weights_dir]
    if sorted(report.categories) != sorted(Category):
        args += [x for c in report.categories for x in ("--only", c.value)]
    flags = (
        ("--target-qps", d.target_qps),
        ("--rate-limit-rpm", d.rate_limit_rpm),
        ("--max-queue", d.max_queue),
        ("--concurrency", d.concurrency),
        ("--context-tokens", d.context_tokens),
    )
    args += [x for flag, value in flags if value is not None for x in (flag, str(value))]
    bench = report.benchmark
    if bench is not None and report.benchmark_source not in (None, MEASURED_HERE):
        args += ["--from", report.benchmark_source]
    elif bench is not None:
        c = bench.config
        args += [
            x
            for flag, key in (
                ("--profile", "profile"),
                ("--requests", "requests"),
                ("--input-len", "input_len"),
                ("--output-len", "output_len"),
                ("--threads", "threads"),
            )
            if c.get(key) is not None
            for x in (flag, str(c[key]))
        ]
        if c.get("eager"):
            args.append("--eager")  # the same decode path: compiled is the default
    return shlex.join(args)
