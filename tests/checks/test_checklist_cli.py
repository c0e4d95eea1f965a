"""`python -m checks run` end to end against planted-fault servers: verdicts, exit codes, files, redaction.

The planted server answers fast (2 ms a token), so a whole checklist takes seconds;
the bundled engine's own PASS/FAIL lines are covered check by check in the
tests/checks/test_readiness_*.py files.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from checks.cli import main
from checks.readiness.config import ChecklistConfig
from checks.readiness.runner import Checklist, ChecklistProgress
from planner.__main__ import main as planner_main
from reports import store
from reports.check_result import CheckStatus
from reports.history import History
from reports.readiness_report import ReadinessReport
from reports.verdict import Verdict
from tests.planted_server import Faults, PlantedServer
from tests.result_docs import record, result_of, run_of

SECRET = "sk-planted-SECRET-7f3a9c"
FAST = {"token_delay_s": 0.002, "max_running": 8, "max_queue": 16, "rate_limit_rpm": 6000, "rate_limit_burst": 200}
SMALL = ["--requests", "6", "--input-len", "16", "--output-len", "8"]


def _run(args: list[str]) -> int:
    return main(["run", *args])


def _report(path: Path) -> ReadinessReport:
    return store.load(path, ReadinessReport)


def test_clean_server_is_ready_and_every_file_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], preflight_env: Path
) -> None:
    out, junit, md, html = tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "r.md", tmp_path / "r.html"
    with PlantedServer(api_key=SECRET, log_path=tmp_path / "server.log", **FAST) as server:
        code = _run(
            [
                "--target",
                server.base_url + "/v1",
                "--api-key",
                SECRET,
                *SMALL,
                "--rate-limit-rpm",
                "6000",
                "--server-log",
                str(server.log_path),
                "--out",
                str(out),
                "--junit",
                str(junit),
                "--markdown",
                str(md),
                "--html",
                str(html),
                "--label",
                "  release candidate 2 ",
            ]
        )
        server_log = server.log_path.read_text()
    printed = capsys.readouterr()
    report = _report(out)
    assert code == 0, printed.out
    assert report.verdict in (Verdict.READY, Verdict.READY_WITH_WARNINGS)
    assert printed.out.splitlines()[0].startswith(f"Verdict: {report.verdict.value} (")
    assert not [r for r in report.checks if r.status in (CheckStatus.FAIL, CheckStatus.ERROR)]
    assert report.benchmark is not None and report.benchmark_source == "measured by this run"
    assert report.metrics_timeline is not None and report.metrics_timeline.source == "preflight"
    assert len(ET.fromstring(junit.read_text()).findall(".//testcase")) == len(report.checks)
    assert md.read_text().startswith(f"# Preflight readiness: **{report.verdict.value}**")
    assert html.read_text().startswith("<!DOCTYPE html>") and report.verdict.value in html.read_text()
    assert report.label == "release candidate 2"
    saved = History(preflight_env / "history").entries()  # every run is kept in the history, labelled
    assert [(e.id, e.label, e.verdict) for e in saved] == [(report.id, report.label, report.verdict.value)]
    assert f"saved in the history as {report.id}" in printed.err
    everything = (
        out.read_text()
        + junit.read_text()
        + md.read_text()
        + html.read_text()
        + printed.out
        + printed.err
        + server_log
        + (preflight_env / "history" / f"{report.id}.json").read_text()
    )
    assert "POST /v1/chat/completions 200" in server_log  # the log is real and saw the checklist's requests
    assert SECRET not in everything  # redaction: the key is in no file, no console line, no log line
    assert report.target.api_key_set


def test_a_planted_fault_is_not_ready_with_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with PlantedServer(Faults(no_auth=True, docs_exposed=True), **FAST) as server:
        code = _run(
            [
                "--target",
                server.base_url,
                "--api-key",
                "planted-key",
                "--only",
                "security",
                "--exposure",
                "public",
                "--out",
                str(tmp_path / "r.json"),
            ]
        )
    report = _report(tmp_path / "r.json")
    assert code == 1 and report.verdict == Verdict.NOT_READY
    failed = {r.id for r in report.checks if r.status == CheckStatus.FAIL}
    assert {"security.auth", "security.exposed_routes", "security.tls"} <= failed
    assert report.categories == ["security"] and report.benchmark is None


def test_dead_target_is_incomplete_with_exit_2_and_a_report(tmp_path: Path) -> None:
    with PlantedServer(**FAST) as server:
        url = server.base_url
    code = _run(["--target", url, "--only", "security,monitoring", "--out", str(tmp_path / "r.json")])
    report = _report(tmp_path / "r.json")
    assert code == 2 and report.verdict == Verdict.INCOMPLETE
    assert report.checks and all(r.status == CheckStatus.ERROR for r in report.checks)
    assert "could not be used" in report.notes[0]


def test_target_dying_mid_run_fails_closed(tmp_path: Path) -> None:
    """The server stops after the first security checks: what follows is ERROR, and nothing turns into a PASS."""
    server = PlantedServer(**FAST).__enter__()
    seen: list[str] = []

    def progress(p: ChecklistProgress) -> None:
        seen.append(p.current or "")
        if p.done == 3 and server.base_url:
            server.__exit__(None, None, None)
            server.base_url = ""

    config = ChecklistConfig(target=server.base_url, api_key="planted-key", only=["security", "monitoring"])
    try:
        report = Checklist(config, progress=progress).run()
    finally:
        if server.base_url:
            server.__exit__(None, None, None)
    after = report.checks[3:]
    assert after and all(r.status in (CheckStatus.ERROR, CheckStatus.SKIP) for r in after), [
        (r.id, r.status) for r in after
    ]
    assert report.verdict == Verdict.INCOMPLETE


def test_from_a_saved_result_runs_no_load(tmp_path: Path) -> None:
    records = [record(i, i * 0.1, [i * 0.1 + 0.05 + k * 0.01 for k in range(5)]) for i in range(40)]
    saved = store.save(result_of([run_of(records)]), tmp_path / "bench.json")
    with PlantedServer(**FAST) as server:
        code = _run(
            [
                "--target",
                server.base_url,
                "--api-key",
                "planted-key",
                "--only",
                "performance",
                "--from",
                str(saved),
                "--out",
                str(tmp_path / "r.json"),
            ]
        )
    report = _report(tmp_path / "r.json")
    assert report.benchmark_source == str(saved) and report.metrics_timeline is None
    ttft = next(r for r in report.checks if r.id == "performance.ttft_p95")
    assert ttft.value == pytest.approx(50.0) and ttft.status in (CheckStatus.PASS, CheckStatus.WARN)
    assert code == (1 if report.verdict == Verdict.NOT_READY else 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "speed"], "error: only: unknown category speed; choose from performance"),
        (["--slo", "no-such-profile"], "error: unknown SLO profile 'no-such-profile'"),
        (["--exposure", "galactic"], "error: exposure: Input should be 'local', 'internal' or 'public'"),
        (["--from", "/no/such/result.json"], "error: /no/such/result.json: no such file"),
        (["--bogus"], "error: unrecognized arguments: --bogus"),
        (["--profile", "bursty:9"], "error: unknown load profile 'bursty:9'; use sync"),
        (
            ["--target", "http://127.0.0.1:9/v1", "--weights", "/models/x"],
            "error: a weights directory is served by the bundled engine: use a bundled target with it",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_existing_output_is_refused_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    out.write_text("{}")
    assert _run(["--target", "http://127.0.0.1:9", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {out} exists; choose another file or allow overwriting\n"
    assert out.read_text() == "{}"


def test_corrupt_from_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "preflight.readiness-report", "schema_version": 1}))
    assert _run(["--target", "http://127.0.0.1:9", "--from", str(bad)]) == 2
    assert capsys.readouterr().err == (
        f"error: {bad} is a 'preflight.readiness-report' document, not a preflight.benchmark-result\n"
    )


def test_report_round_trips_and_schema_is_committed() -> None:
    from reports.schema_files import stale_schemas

    assert not [p for p in stale_schemas() if "readiness" in p.name or "slo" in p.name]


def test_a_handed_over_plan_is_kept_and_sizes_the_kv_line(tmp_path: Path) -> None:
    """A plan from the planner's own CLI: the report keeps it and the KV line says it used the plan."""
    plan = tmp_path / "plan.json"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert planner_main(["recommend", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--json"]) == 0
    plan.write_text(buffer.getvalue())
    with PlantedServer(Faults(no_metrics=True), **FAST) as server:
        _run(
            [
                "--target",
                server.base_url,
                "--api-key",
                "planted-key",
                "--only",
                "resources",
                *SMALL,
                "--plan",
                str(plan),
                "--concurrency",
                "4",
                "--context-tokens",
                "4096",
                "--out",
                str(tmp_path / "r.json"),
            ]
        )
    report = _report(tmp_path / "r.json")
    assert report.plan is not None and report.plan["model"] == json.loads(plan.read_text())["model"]
    kv = next(r for r in report.checks if r.id == "resources.kv_capacity")
    assert kv.status == CheckStatus.PASS and "plan" in " ".join([kv.message, *kv.evidence])


def test_a_plan_that_is_not_a_plan_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text("[1]")
    assert _run(["--target", "http://127.0.0.1:9", "--plan", str(bad)]) == 2
    assert capsys.readouterr().err == (
        f"error: the plan {bad} has no 'options' list; write it with python -m planner recommend --json\n"
    )


def test_server_pid_of_a_url_target_is_watched_by_the_measured_run(tmp_path: Path) -> None:
    """--server-pid with a URL: the run's timeline follows that process, so the RSS line judges it.

    Found on a GPU run against `engine serve --device cuda`: the line said the timeline "did not
    watch process N" although --server-pid N was given. The planted server runs in this process.
    """
    out = tmp_path / "r.json"
    with PlantedServer(Faults(), **FAST) as server:
        _run(
            [
                "--target",
                server.base_url,
                "--api-key",
                "planted-key",
                "--only",
                "resources",
                *SMALL,
                "--server-pid",
                str(os.getpid()),
                "--out",
                str(out),
            ]
        )
    report = _report(out)
    rss = next(r for r in report.checks if r.id == "resources.rss_growth")
    assert "did not watch" not in rss.message, rss.message
    assert report.benchmark is not None
    samples = report.benchmark.resources.samples
    assert any(s.proc_rss_bytes for s in samples), "the timeline must carry the watched process's RSS"


def test_no_history_and_an_unwritable_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], preflight_env: Path
) -> None:
    """--no-history saves nothing; a history that cannot be written warns but keeps the verdict's exit code."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with PlantedServer(**FAST) as server:
        base = ["--target", server.base_url, "--api-key", "planted-key", "--only", "monitoring"]
        quiet = _run([*base, "--no-history"])
        capsys.readouterr()
        blocked = _run([*base, "--history", str(blocker / "sub")])
    assert not (preflight_env / "history").exists()
    assert blocked == quiet
    assert "warning: not saved in the history: cannot create the history folder" in capsys.readouterr().err
