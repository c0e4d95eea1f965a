"""A readiness report as JUnit XML, so CI systems show each check as a test case.

One <testsuite> per category and one <testcase> per check: FAIL is a <failure>,
ERROR an <error>, SKIP <skipped>. JUnit has no "warning", so a WARN passes as a test
and carries its finding in <system-out>, which keeps the CI view consistent with the
verdict (READY_WITH_WARNINGS exits 0).

The layout is the one Jenkins' JUnit plugin and pytest's xunit2 family accept (the
tests validate it against a schema of that layout and parse it back with junitparser):
no <properties> inside a test case (the measured value and the limit go into the text),
no `skipped` count on <testsuites>, and timestamps in UTC without a zone suffix.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from reports.check_result import Category, CheckResult, CheckStatus
from reports.readiness_report import ReadinessReport

OUTCOME = {CheckStatus.FAIL: "failure", CheckStatus.ERROR: "error"}
# Characters XML 1.0 cannot hold at all, not even escaped; a server's error text can contain them.
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text(value: str) -> str:
    """`value` with every character XML cannot hold written as a visible escape (\\x1b), so the file parses."""
    return NOT_XML.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), value)


def _measured(r: CheckResult) -> list[str]:
    unit = f" {r.unit}" if r.unit else ""
    out = [] if r.value is None else [f"value: {r.value}{unit}"]
    return out + ([] if r.threshold is None else [f"limit: {r.threshold}{unit}"])


def _case(suite: ET.Element, r: CheckResult) -> tuple[int, int, int]:
    case = ET.SubElement(
        suite,
        "testcase",
        name=_text(f"{r.id}: {r.title}"),
        classname=f"preflight.{r.category.value}",
        time=f"{r.duration_s or 0.0:.3f}",
    )
    detail = _text(
        "\n".join([r.message, *_measured(r), *([f"fix: {r.remediation}"] if r.remediation else []), *r.evidence])
    )
    if r.status == CheckStatus.SKIP:
        ET.SubElement(case, "skipped", message=_text(r.message))
    elif r.status in OUTCOME:
        ET.SubElement(case, OUTCOME[r.status], message=_text(r.message), type=r.status.value).text = detail
    ET.SubElement(case, "system-out").text = f"{r.status.value}: {detail}"
    return (r.status == CheckStatus.FAIL, r.status == CheckStatus.ERROR, r.status == CheckStatus.SKIP)


def _timestamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def to_junit(report: ReadinessReport) -> str:
    root = ET.Element("testsuites", name=f"Preflight readiness: {report.verdict.value}")
    totals = [0, 0, 0, 0]
    for category in Category:
        rows = [r for r in report.checks if r.category == category]
        if not rows:
            continue
        suite = ET.SubElement(
            root, "testsuite", name=f"preflight.{category.value}", timestamp=_timestamp(report.started_at)
        )
        marks = [_case(suite, r) for r in rows]
        n = [len(rows), *(sum(m[i] for m in marks) for i in range(3))]
        for key, value in zip(("tests", "failures", "errors", "skipped"), n, strict=True):
            suite.set(key, str(value))
        suite.set("time", f"{sum(r.duration_s or 0.0 for r in rows):.3f}")
        totals = [a + b for a, b in zip(totals, n, strict=True)]
    for key, value in zip(("tests", "failures", "errors"), totals[:3], strict=True):  # <testsuites> has no `skipped`
        root.set(key, str(value))
    root.set("time", f"{sum(r.duration_s or 0.0 for r in report.checks):.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
