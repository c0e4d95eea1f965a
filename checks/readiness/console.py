"""The console view of a readiness report: the verdict first, then one line per check.

A pipeline log is read top-down by someone deciding whether to launch, so the verdict
and the tally lead; every non-PASS line then carries its fix on the next line.
"""

from __future__ import annotations

from reports.check_result import CheckResult, CheckStatus
from reports.markdown import figure
from reports.readiness_report import ReadinessReport

ID_WIDTH = 34


def _measure(r: CheckResult) -> str:
    if r.value is None:
        return ""
    limit = f" (limit {figure(r.threshold, r.unit)})" if r.threshold is not None else ""
    return f" [{figure(r.value, r.unit)}{limit}]"


def format_report(report: ReadinessReport) -> str:
    tally = ", ".join(f"{n} {s.value}" for s, n in report.status_counts().items() if n)
    t = report.target
    lines = [
        f"Verdict: {report.verdict.value} ({tally or 'no checks'})",
        f"Target: {t.base_url} ({t.kind}), model {t.model}, {t.api} API; SLO profile {report.slo.name}; "
        f"exposure {report.exposure.value}",
    ]
    lines += [f"Note: {note}" for note in report.notes]
    for r in report.checks:
        lines.append(f"{r.status.value:<6} {r.id:<{ID_WIDTH}} {r.message}{_measure(r)}")
        if r.status not in (CheckStatus.PASS, CheckStatus.SKIP) and r.remediation:
            lines.append(f"{'':<6} {'':<{ID_WIDTH}} fix: {r.remediation}")
    return "\n".join(lines)
