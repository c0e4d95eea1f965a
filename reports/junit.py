"""A readiness report as JUnit XML, so CI systems show each check as a test case.

One <testsuite> per category and one <testcase> per check: FAIL is a <failure>,
ERROR an <error>, SKIP <skipped>. JUnit has no "warning", so a WARN passes as a test
and carries its finding in <system-out> with a `status` property, which keeps the CI
view consistent with the verdict (READY_WITH_WARNINGS exits 0).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from reports.check_result import Category, CheckResult, CheckStatus
from reports.readiness_report import ReadinessReport


def _case(suite: ET.Element, r: CheckResult) -> tuple[int, int, int]:
    case = ET.SubElement(suite, "testcase", name=f"{r.id}: {r.title}", classname=f"preflight.{r.category.value}",
                         time=f"{r.duration_s or 0.0:.3f}")  # fmt: skip
    detail = "\n".join([r.message, *([f"fix: {r.remediation}"] if r.remediation else []), *r.evidence])
    if r.status == CheckStatus.FAIL:
        ET.SubElement(case, "failure", message=r.message, type="FAIL").text = detail
    elif r.status == CheckStatus.ERROR:
        ET.SubElement(case, "error", message=r.message, type="ERROR").text = detail
    elif r.status == CheckStatus.SKIP:
        ET.SubElement(case, "skipped", message=r.message)
    props = ET.SubElement(case, "properties")
    ET.SubElement(props, "property", name="status", value=r.status.value)
    if r.value is not None:
        ET.SubElement(props, "property", name="value", value=f"{r.value}{' ' + r.unit if r.unit else ''}")
    if r.threshold is not None:
        ET.SubElement(props, "property", name="threshold", value=f"{r.threshold}{' ' + r.unit if r.unit else ''}")
    if r.status in (CheckStatus.PASS, CheckStatus.WARN):
        ET.SubElement(case, "system-out").text = f"{r.status.value}: {detail}"
    return (r.status == CheckStatus.FAIL, r.status == CheckStatus.ERROR, r.status == CheckStatus.SKIP)


def to_junit(report: ReadinessReport) -> str:
    root = ET.Element("testsuites", name=f"Preflight readiness: {report.verdict.value}")
    totals = [0, 0, 0, 0]
    for category in Category:
        rows = [r for r in report.checks if r.category == category]
        if not rows:
            continue
        suite = ET.SubElement(root, "testsuite", name=f"preflight.{category.value}",
                              timestamp=report.started_at.isoformat(timespec="seconds"))  # fmt: skip
        marks = [_case(suite, r) for r in rows]
        n = [len(rows), *(sum(m[i] for m in marks) for i in range(3))]
        for key, value in zip(("tests", "failures", "errors", "skipped"), n, strict=True):
            suite.set(key, str(value))
        suite.set("time", f"{sum(r.duration_s or 0.0 for r in rows):.3f}")
        totals = [a + b for a, b in zip(totals, n, strict=True)]
    for key, value in zip(("tests", "failures", "errors", "skipped"), totals, strict=True):
        root.set(key, str(value))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
