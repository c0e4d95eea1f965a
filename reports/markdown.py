"""A readiness report as Markdown, to paste into a launch review or a pull request.

The verdict comes first, then a table per category: status, what was checked, the
measured value against its limit, and the finding. Evidence and remediation follow
each non-PASS line, because those are what a reviewer acts on. Pure text from the
report: nothing is re-measured, and no secret can appear that the report does not hold.
"""

from __future__ import annotations

from reports.check_result import Category, CheckResult, CheckStatus
from reports.readiness_report import ReadinessReport

STATUS_MARK = {
    CheckStatus.PASS: "✅ PASS", CheckStatus.WARN: "⚠️ WARN", CheckStatus.FAIL: "❌ FAIL",
    CheckStatus.SKIP: "⏭️ SKIP", CheckStatus.ERROR: "🛑 ERROR",
}  # fmt: skip


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
    return (f"| {STATUS_MARK[r.status]} | {cell(r.title)} | {cell(figure(r.value, r.unit))} "
            f"| {cell(figure(r.threshold, r.unit))} | {cell(r.message)} |")  # fmt: skip


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
        lines += ["", f"## {category.value.capitalize()}", "",
                  "| Status | Check | Value | Limit | Finding |", "|---|---|---|---|---|"]  # fmt: skip
        lines += [_line(r) for r in rows]
    findings = [r for r in report.checks if r.status != CheckStatus.PASS]
    if findings:
        lines += ["", "## Findings and evidence", ""]
        for r in findings:
            lines += _details(r)
    return "\n".join(lines).rstrip() + "\n"
