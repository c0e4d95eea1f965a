"""Markdown and JUnit exports of a readiness report: verdict first, every check present, XML that parses."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import xmlschema
from junitparser import JUnitXml, TestSuite

from checks.readiness.slo import load_profile
from reports.check_result import Category, CheckResult, CheckStatus, Exposure
from reports.junit import to_junit
from reports.markdown import to_markdown
from reports.readiness_report import ReadinessReport, TargetInfo, ToolInfo
from reports.verdict import decide

SCHEMA = xmlschema.XMLSchema(Path(__file__).resolve().parents[1] / "fixtures" / "junit-jenkins.xsd")


def _check(i: int, status: CheckStatus, category: Category) -> CheckResult:
    return CheckResult(
        id=f"{category.value}.c{i}",
        category=category,
        title=f"check {i} | piped",
        status=status,
        value=12345.678 if i == 0 else 0.5,
        threshold=500.0,
        unit="ms",
        evidence=[f"GET /x -> {i}"],
        message=f"finding {i}",
        remediation="do the fix" if status != CheckStatus.PASS else None,
        duration_s=0.25,
    )


def _report() -> ReadinessReport:
    checks = [
        _check(0, CheckStatus.PASS, Category.PERFORMANCE),
        _check(1, CheckStatus.WARN, Category.SECURITY),
        _check(2, CheckStatus.FAIL, Category.SECURITY),
        _check(3, CheckStatus.SKIP, Category.RESOURCES),
        _check(4, CheckStatus.ERROR, Category.MONITORING),
    ]
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    target = TargetInfo(
        kind="remote", base_url="https://u:sk-x@gw.example/v1?key=sk-x", model="m", api="chat", api_key_set=True
    )
    return ReadinessReport(
        tool=ToolInfo(version="0.1.0"),
        started_at=now,
        finished_at=now,
        environment={},
        target=target,
        slo=load_profile("chat"),
        exposure=Exposure.PUBLIC,
        categories=list(Category),
        checks=checks,
        verdict=decide(checks),
    )


def test_target_url_is_redacted_in_the_document() -> None:
    assert _report().target.base_url == "https://gw.example/v1"


def test_markdown_leads_with_the_verdict_and_lists_every_check() -> None:
    text = to_markdown(_report())
    assert text.startswith("# Preflight readiness: **NOT_READY**\n")
    assert "1 PASS, 1 WARN, 1 FAIL, 1 SKIP, 1 ERROR" in text
    assert text.count("| check ") == 5 and "check 1 \\| piped" in text  # pipes escaped inside table cells
    assert "12346 ms" in text  # large figures in plain digits, not 1.235e+04
    assert "**Fix:** do the fix" in text and "GET /x -> 2" in text
    assert "sk-x" not in text


def _junit_suites(xml: str, tmp_path: Path) -> list[TestSuite]:
    """The export, validated against the Jenkins/xunit2 layout and parsed back by junitparser (a library CI
    tools use), not by string matching."""
    SCHEMA.validate(xml)
    path = tmp_path / "junit.xml"
    path.write_text(xml, encoding="utf-8")
    parsed = JUnitXml.fromfile(str(path))
    return list(parsed) if isinstance(parsed, JUnitXml) else [parsed]


def test_junit_marks_fail_error_skip_and_keeps_warn_as_a_pass(tmp_path: Path) -> None:
    xml = to_junit(_report())
    suites = _junit_suites(xml, tmp_path)
    assert {s.name for s in suites} == {f"preflight.{c.value}" for c in Category if c != Category.RELIABILITY}
    assert (
        sum(s.tests for s in suites),
        sum(s.failures for s in suites),
        sum(s.errors for s in suites),
        sum(s.skipped for s in suites),
    ) == (5, 1, 1, 1)
    cases = {c.name.split(":")[0]: c for s in suites for c in s}
    outcome = {name: [type(r).__name__ for r in case.result] for name, case in cases.items()}
    assert outcome == {
        "performance.c0": [],
        "security.c1": [],
        "security.c2": ["Failure"],
        "resources.c3": ["Skipped"],
        "monitoring.c4": ["Error"],
    }
    assert cases["security.c2"].result[0].message == "finding 2"
    text = cases["security.c2"].result[0].text
    assert "value: 0.5 ms" in text and "limit: 500.0 ms" in text and "fix: do the fix" in text
    assert cases["security.c1"].system_out.startswith("WARN: finding 1")  # a WARN passes, its finding kept
    assert cases["performance.c0"].time == 0.25 and cases["performance.c0"].classname == "preflight.performance"


def test_junit_of_a_real_report_and_of_hostile_text_is_valid(tmp_path: Path) -> None:
    from reports import store

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "readiness-report.v1.json"
    real = store.load(fixture, ReadinessReport)
    suites = _junit_suites(to_junit(real), tmp_path)
    assert sum(s.tests for s in suites) == len(real.checks)
    hostile = "bad \x1b[31m\x00 bytes ]]> </failure> & <x>"
    report = _report()
    report = report.model_copy(
        update={"checks": [c.model_copy(update={"message": hostile, "evidence": [hostile]}) for c in report.checks]}
    )
    cases = [c for s in _junit_suites(to_junit(report), tmp_path) for c in s]
    failure = next(r for c in cases for r in c.result if type(r).__name__ == "Failure")
    assert failure.message == "bad \\x1b[31m\\x00 bytes ]]> </failure> & <x>"


def test_markdown_ends_with_key_metrics_environment_and_a_command_the_cli_accepts() -> None:
    """The launch-review page of a real report (an H200 run): intervals, the machine, and how to run it again."""
    import shlex

    from checks.cli import build_parser
    from reports import store

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "readiness-report.v1.json"
    text = to_markdown(store.load(fixture, ReadinessReport))
    assert "| concurrency:16 | 64 / 0 | 202 (135-244) |" in text  # p50 TTFT with its bootstrap interval
    assert "- GPU 0: NVIDIA H200" in text
    command = text.split("## Reproduce")[1].split("```bash\n")[1].split("\n```")[0].splitlines()[-1]
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "checks", "run"]
    args = build_parser().parse_args(argv[3:])
    assert (args.target, args.profile, args.requests, args.concurrency) == (
        "http://127.0.0.1:8123/v1",
        "concurrency:16",
        64,
        32,
    )
    assert "PREFLIGHT_TARGET_API_KEY" in to_markdown(_report())  # a keyed target says where the key comes from
