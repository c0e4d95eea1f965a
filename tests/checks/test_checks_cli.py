"""`python -m checks bench`, run in-process: exit codes, the exact error line, and one real bundled run."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fault_server import Behaviour, FaultServer, Script
from pydantic import ValidationError

from checks.cli import STOPPED, _Interrupts, build_parser, main, parse_duration
from checks.load.benchmark import BenchmarkConfig
from checks.load.console import format_result
from checks.load.profiles import PROFILE_HELP
from checks.load.targets import REPO_ROOT, free_port
from checks.readiness.config import ChecklistConfig
from reports import store
from reports.benchmark_result import BundledTargetDoc, load_benchmark_result
from reports.history import History
from reports.readiness_report import ReadinessReport
from reports.verdict import Verdict

TINY = [
    "--requests",
    "2",
    "--warmup-requests",
    "0",
    "--input-len",
    "16",
    "--output-len",
    "4",
    "--threads",
    "1",
    "--eager",
]


def test_bundled_run_prints_the_console_block_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], preflight_env: Path
) -> None:
    out = tmp_path / "reports" / "bench.json"
    code = main(["bench", *TINY, "--profile", "concurrency:2", "--out", str(out), "--label", "tiny"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = load_benchmark_result(out)
    assert isinstance(result.target, BundledTargetDoc) and result.target.threads == 1
    (run,) = result.runs
    assert run.profile == "concurrency:2"
    assert (run.summary.completed, run.summary.failed) == (2, 0)
    assert run.summary.total_output_tokens == 8
    assert captured.out == format_result(result) + "\n"  # the block printed is the file's
    assert captured.out.startswith("Target: http://127.0.0.1:")
    assert " Profile: concurrency:2 " in captured.out
    assert f"{'Completed':<44}{2:>16}" in captured.out.splitlines()
    err = captured.err.splitlines()
    assert err[0] == "starting the bundled engine (int4, eager decode) and waiting for /health"
    assert err[-1] == f"wrote {out}"
    assert not any(line.startswith("error") for line in err)
    (entry,) = History(preflight_env / "history").entries()  # kept in the history too, with its label
    assert (entry.id, entry.label, entry.kind) == (result.id, "tiny", "benchmark")


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--profile", "bogus"], f"error: unknown load profile 'bogus'; use {PROFILE_HELP}"),
        (
            ["--profile", "concurrency:x"],
            f"error: bad load profile 'concurrency:x': invalid literal for int() with base 10: 'x'; use {PROFILE_HELP}",
        ),
        (
            ["--dataset", "prompts.jsonl", "--scenario", "dialogue"],
            "error: choose one workload: a dataset, a scenario or a trace",
        ),
        (["--requests", "0"], "error: requests: Input should be greater than or equal to 1"),
        (
            ["--target", "ftp://example"],
            "error: target 'ftp://example': use 'bundled', 'bundled:QUANT' or an http(s):// URL",
        ),
        (
            ["--duration", "2x"],
            "error: argument --duration: bad duration '2x': use e.g. 60s, 2m or 500ms"
            " (see python -m checks bench --help)",
        ),
        (["--requests"], "error: argument --requests: expected one argument (see python -m checks bench --help)"),
        (["--bogus"], "error: unrecognized arguments: --bogus (see python -m checks --help)"),
    ],
)
def test_bad_flags_are_one_error_line_and_exit_2(
    flags: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == line + "\n"


def test_unwritable_out_fails_before_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The target is never started: the bad path is found in milliseconds, not after the benchmark."""
    (tmp_path / "a-file").write_text("")
    cases = [
        (tmp_path, f"error: --out: {tmp_path} is a folder; give a file name"),
        (
            tmp_path / "a-file" / "bench.json",
            f"error: --out: cannot write {tmp_path / 'a-file' / 'bench.json'}: {tmp_path / 'a-file'} is not writable",
        ),
    ]
    for out, line in cases:
        assert main(["bench", *TINY, "--out", str(out)]) == 2
        captured = capsys.readouterr()
        assert (captured.out, captured.err) == ("", line + "\n")


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    line = "error: the following arguments are required: command (see python -m checks --help)"
    assert capsys.readouterr().err == line + "\n"


@pytest.mark.parametrize("quiet", [True, False])
def test_dead_remote_url_exits_1_with_cannot_connect(quiet: bool, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert main(["bench", "--target", url, *(["--quiet"] if quiet else [])]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.splitlines()
    assert err == ([] if quiet else [f"probing {url}"]) + err[-1:]
    assert err[-1].startswith(f"error: cannot connect to {url}: ")
    assert err[-1].endswith("; check the URL and that the server runs")


@pytest.mark.parametrize(
    ("text", "seconds"), [("2s", 2.0), ("90", 90.0), ("500ms", 0.5), ("1.5m", 90.0), ("2h", 7200.0), (" 3 s ", 3.0)]
)
def test_duration_parses(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert build_parser().parse_args(["bench", "--duration", text]).duration_s == seconds


def test_duration_alone_bounds_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    """--duration 2s without --requests is a valid config: the run gets as far as the (dead) target."""
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["bench", "--duration", "2s", "--target", url, "--quiet"]) == 1
    assert capsys.readouterr().err.startswith(f"error: cannot connect to {url}")


def test_a_trace_replay_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--trace-window takes a duration; a trace that cannot be replayed stops the command before any target."""
    args = build_parser().parse_args(["bench", "--trace", "t.csv", "--trace-window", "10m", "--trace-speed", "2"])
    assert (args.trace, args.trace_window_s, args.trace_speed) == ("t.csv", 600.0, 2.0)
    bad = tmp_path / "t.csv"
    bad.write_text("when,in,out\n1,2,3\n")
    assert main(["bench", "--trace", str(bad), "--target", "bundled", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("error: --trace: t.csv:1: an Azure trace's header has TIMESTAMP")


def test_trace_sample_reaches_the_config_and_needs_a_trace(capsys: pytest.CaptureFixture[str]) -> None:
    """--trace-sample thins the replay (checks.load.traces.sample_draws); alone, or outside (0, 1], it is refused."""
    args = build_parser().parse_args(["bench", "--trace", "t.csv", "--trace-sample", "0.05", "--seed", "4"])
    assert (args.trace_sample, args.seed) == (0.05, 4)
    assert main(["bench", "--trace-sample", "0.5", "--quiet"]) == 2
    err = "error: a trace sample thins a trace's rows: give the trace file, or leave the sample at 1\n"
    assert capsys.readouterr().err == err
    assert main(["bench", "--trace", "t.csv", "--trace-sample", "0", "--quiet"]) == 2
    assert capsys.readouterr().err == "error: trace_sample: Input should be greater than 0\n"


def test_switches_are_bare_flags() -> None:
    """A bool field of BenchmarkConfig is a flag without a value; left out, the config default (off) holds.

    Compiled decode is the bundled target's default, so `--eager` is the switch; `--compile` from older
    command lines is still accepted and changes nothing."""
    assert build_parser().parse_args(["bench", "--eager"]).eager is True
    assert "eager" not in vars(build_parser().parse_args(["bench"]))
    assert BenchmarkConfig().eager is False
    assert build_parser().parse_args(["bench", "--compile"]).legacy_compile is True


# ---- target URLs: one rule for the CLI, the pages and the Endpoint (issue 16, item 11) -------------

SECRET = "sk-in-the-url"
HELD_KEY = (
    "target URL 'http://127.0.0.1:8000/v1' holds a user name or key before '@': remove it and pass the key with "
    "--api-key (or the API key field)"
)
QUERY = (
    "target URL 'http://127.0.0.1:8000/v1' has a query string ('?...'): remove it; a key goes in --api-key "
    "(or the API key field), and the API paths are appended to the URL"
)
BAD_URLS = [
    (f"http://user:{SECRET}@127.0.0.1:8000/v1", HELD_KEY),
    (f"http://{SECRET}@127.0.0.1:8000/v1", HELD_KEY),
    (f"http://127.0.0.1:8000/v1?api_key={SECRET}", QUERY),
    ("http://127.0.0.1:8000/v1?", QUERY),
    ("http://127.0.0.1:8000/v1#models", "target URL 'http://127.0.0.1:8000/v1' has a fragment ('#...'): remove it"),
    ("http://127.0.0.1:99999/v1", "the target URL is not a valid URL: Port out of range 0-65535"),
    ("http:///v1", "target URL 'http:///v1' must be http:// or https:// and name a host"),
]


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
def test_a_target_url_with_userinfo_query_or_fragment_is_exit_2(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before anything starts, and the key typed into the URL is not echoed."""
    assert main(["bench", "--target", url]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"error: {message}\n")
    assert main(["run", "--target", url]) == 2
    err = capsys.readouterr().err
    assert err == f"error: target: {message}\n" and SECRET not in err


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
def test_the_pages_models_refuse_the_same_urls(url: str, message: str) -> None:
    """The Benchmark and Checklist pages hand their form to these models, which share the CLI's rule."""
    for model in (BenchmarkConfig, ChecklistConfig):
        with pytest.raises(ValidationError, match=re.escape(message)):
            model(target=url)


def test_a_plain_target_url_is_accepted() -> None:
    for url in ("http://127.0.0.1:8000", "https://gateway.example:8443/v1/", "http://[::1]:8000/v1"):
        assert BenchmarkConfig(target=url).bundled_quant() is None


# ---- Ctrl-C keeps what was measured (issue 16, item 9) ------------------------------------------

STOP_DEADLINE_S = 60.0  # hang detectors: generous, never a speed figure


def _completions(server: FaultServer) -> int:
    return sum(r.method == "POST" for r in server.requests)


def _interrupt_after(proc: subprocess.Popen[str], server: FaultServer, posts: int) -> tuple[str, str]:
    """SIGINT once the server has seen `posts` completion requests; the process's stdout and stderr after it ends."""
    deadline = time.monotonic() + STOP_DEADLINE_S
    while _completions(server) < posts and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    assert _completions(server) >= posts, "the run never got going"
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=STOP_DEADLINE_S)


def _checks(*args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "checks", *args]
    return subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ctrl_c_during_a_bench_saves_the_records_measured_so_far(tmp_path: Path) -> None:
    """Before the fix the cancel event was never set: Ctrl-C printed 'interrupted' and no file was written."""
    out = tmp_path / "bench.json"
    with FaultServer(Script(chunks=3, chunk_delay_s=0.05)) as server:
        sizes = ["--warmup-requests", "0", "--input-len", "16", "--output-len", "4"]
        proc = _checks(
            "bench",
            "--target",
            server.base_url,
            "--profile",
            "concurrency:2",
            "--duration",
            "10m",
            *sizes,
            "--out",
            str(out),
        )
        stdout, stderr = _interrupt_after(proc, server, posts=8)
    assert proc.returncode == 130, stderr
    assert stderr.splitlines()[-2:] == [f"wrote {out}", STOPPED]
    result = load_benchmark_result(out)
    assert result.cancelled
    (run,) = result.runs
    assert run.cancelled and run.summary.completed >= 6
    assert stdout == format_result(result) + "\n"
    assert all(r.ok or r.error_kind == "cancelled" for r in run.records)


def test_ctrl_c_before_the_load_starts_aborts_at_once(tmp_path: Path) -> None:
    """Nothing is measured while the target is probed: Ctrl-C aborts as it always did, and no file is written."""
    out = tmp_path / "bench.json"
    with FaultServer(Script(Behaviour.SLOW_FIRST_BYTE, first_byte_delay_s=120.0)) as server:
        proc = _checks("bench", "--target", server.base_url, "--out", str(out))
        _, stderr = _interrupt_after(proc, server, posts=1)  # the probe's request, answered two minutes later
    assert proc.returncode == 130
    assert stderr.splitlines()[-1] == "interrupted"
    assert not out.exists()


def test_ctrl_c_during_a_checklist_still_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    with FaultServer(Script(chunks=3, chunk_delay_s=0.05)) as server:
        proc = _checks(
            "run",
            "--target",
            server.base_url,
            "--only",
            "performance",
            "--requests",
            "400",
            "--input-len",
            "16",
            "--output-len",
            "4",
            "--out",
            str(out),
        )
        _, stderr = _interrupt_after(proc, server, posts=8)
    assert proc.returncode == 2, stderr  # INCOMPLETE: the checks after the stop did not run
    assert stderr.splitlines()[-1] == STOPPED
    report = store.load(out, ReadinessReport)
    assert report.verdict is Verdict.INCOMPLETE
    assert report.benchmark is not None and report.benchmark.cancelled
    assert report.benchmark.runs[0].summary.completed >= 4


def test_the_second_ctrl_c_aborts() -> None:
    """Real SIGINTs to this process: before the load (not graceful) the first one aborts; during it the first one
    only sets the cancel event and the second aborts. The previous handler comes back after the block."""
    before = signal.getsignal(signal.SIGINT)
    cancel = threading.Event()
    with _Interrupts(cancel), pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    assert not cancel.is_set()
    with _Interrupts(cancel) as interrupts:
        interrupts.graceful = True
        signal.raise_signal(signal.SIGINT)
        assert cancel.is_set()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_bundled_benchmark_can_keep_its_servers_step_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`bench --step-log FILE` starts the bundled server with `--step-log FILE` (the passes a calibration
    prices, `planner calibrate --step-log`); a remote server writes no such log, so it is refused there."""
    from checks.load.benchmark import make_target
    from checks.load.targets import BundledTarget

    log = tmp_path / "steps.jsonl"
    target = make_target(BenchmarkConfig(target="bundled", step_log=str(log), requests=4), lambda _msg: None)
    assert isinstance(target, BundledTarget)
    command = target.command()
    assert command[command.index("--step-log") + 1] == str(log)
    plain = make_target(BenchmarkConfig(target="bundled", requests=4), lambda _msg: None)
    assert isinstance(plain, BundledTarget) and "--step-log" not in plain.command()
    with pytest.raises(ValidationError, match="use a bundled target with it"):
        BenchmarkConfig(target="http://127.0.0.1:9/v1", step_log=str(log))
    assert main(["bench", "--target", "http://127.0.0.1:9/v1", "--step-log", str(log), "--quiet"]) == 2
    assert "a step log is written by the bundled engine's server" in capsys.readouterr().err
