"""Markdown and JUnit exports of a readiness report: verdict first, every check present, XML that parses."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from checks.readiness.slo import load_profile
from reports.check_result import Category, CheckResult, CheckStatus, Exposure
from reports.junit import to_junit
from reports.markdown import to_markdown
from reports.readiness_report import ReadinessReport, TargetInfo, ToolInfo
from reports.verdict import decide


def _check(i: int, status: CheckStatus, category: Category) -> CheckResult:
    return CheckResult(id=f"{category.value}.c{i}", category=category, title=f"check {i} | piped", status=status,
                       value=12345.678 if i == 0 else 0.5, threshold=500.0, unit="ms", evidence=[f"GET /x -> {i}"],
                       message=f"finding {i}", remediation="do the fix" if status != CheckStatus.PASS else None,
                       duration_s=0.25)  # fmt: skip


def _report() -> ReadinessReport:
    checks = [_check(0, CheckStatus.PASS, Category.PERFORMANCE), _check(1, CheckStatus.WARN, Category.SECURITY),
              _check(2, CheckStatus.FAIL, Category.SECURITY), _check(3, CheckStatus.SKIP, Category.RESOURCES),
              _check(4, CheckStatus.ERROR, Category.MONITORING)]  # fmt: skip
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    target = TargetInfo(kind="remote", base_url="https://u:sk-x@gw.example/v1?key=sk-x", model="m", api="chat",
                        api_key_set=True)  # fmt: skip
    return ReadinessReport(tool=ToolInfo(version="0.1.0"), started_at=now, finished_at=now, environment={},
                           target=target, slo=load_profile("chat"), exposure=Exposure.PUBLIC,
                           categories=list(Category), checks=checks, verdict=decide(checks))  # fmt: skip


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


def test_junit_marks_fail_error_skip_and_keeps_warn_as_a_pass() -> None:
    root = ET.fromstring(to_junit(_report()))
    assert root.get("tests") == "5" and root.get("failures") == "1" and root.get("errors") == "1"
    assert root.get("skipped") == "1"
    cases = {c.get("name").split(":")[0]: c for c in root.iter("testcase")}
    assert cases["security.c2"].find("failure") is not None
    assert cases["monitoring.c4"].find("error") is not None
    assert cases["resources.c3"].find("skipped") is not None
    warn = cases["security.c1"]
    assert warn.find("failure") is None and warn.find("system-out").text.startswith("WARN: finding 1")
    assert {s.get("name") for s in root.iter("testsuite")} == {f"preflight.{c.value}" for c in Category
                                                              if c != Category.RELIABILITY}  # fmt: skip


def test_markdown_ends_with_key_metrics_environment_and_a_command_the_cli_accepts() -> None:
    """The launch-review page of a real report (an H200 run): intervals, the machine, and how to run it again."""
    import shlex
    from pathlib import Path

    from checks.cli import build_parser
    from reports import store

    fixture = Path(__file__).resolve().parent / "fixtures" / "readiness-report.v1.json"
    text = to_markdown(store.load(fixture, ReadinessReport))
    assert "| concurrency:16 | 64 / 0 | 202 (135-244) |" in text  # p50 TTFT with its bootstrap interval
    assert "- GPU 0: NVIDIA H200" in text
    command = text.split("## Reproduce")[1].split("```bash\n")[1].split("\n```")[0].splitlines()[-1]
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "checks", "run"]
    args = build_parser().parse_args(argv[3:])
    assert (args.target, args.profile, args.requests, args.concurrency) == (
        "http://127.0.0.1:8123/v1", "concurrency:16", 64, 32)
    assert "PREFLIGHT_TARGET_API_KEY" in to_markdown(_report())  # a keyed target says where the key comes from
