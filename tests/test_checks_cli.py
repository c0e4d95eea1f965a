"""`python -m checks bench`, run in-process: exit codes, the exact error line, and one real bundled run."""

from __future__ import annotations

from pathlib import Path

import pytest

from checks.cli import build_parser, main, parse_duration
from checks.load.benchmark import BenchmarkConfig
from checks.load.console import format_result
from checks.load.profiles import PROFILE_HELP
from checks.load.targets import free_port
from reports.benchmark_result import BundledTargetDoc, load_benchmark_result

TINY = ["--requests", "2", "--warmup-requests", "0", "--input-len", "16", "--output-len", "4", "--threads", "1"]


def test_bundled_run_prints_the_console_block_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reports" / "bench.json"
    code = main(["bench", *TINY, "--profile", "concurrency:2", "--out", str(out)])
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
    assert err[0] == "starting the bundled engine (int4) and waiting for /health"
    assert err[-1] == f"wrote {out}"
    assert not any(line.startswith("error") for line in err)


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--profile", "bogus"], f"error: unknown load profile 'bogus'; use {PROFILE_HELP}"),
        (["--profile", "concurrency:x"],
         f"error: bad load profile 'concurrency:x': invalid literal for int() with base 10: 'x'; use {PROFILE_HELP}"),
        (["--dataset", "prompts.jsonl", "--scenario", "dialogue"], "error: choose a dataset or a scenario, not both"),
        (["--requests", "0"], "error: requests: Input should be greater than or equal to 1"),
        (["--target", "ftp://example"],
         "error: target 'ftp://example': use 'bundled', 'bundled:QUANT' or an http(s):// URL"),
        (["--duration", "2x"],
         "error: argument --duration: bad duration '2x': use e.g. 60s, 2m or 500ms"
         " (see python -m checks bench --help)"),
        (["--requests"], "error: argument --requests: expected one argument (see python -m checks bench --help)"),
        (["--bogus"], "error: unrecognized arguments: --bogus (see python -m checks --help)"),
    ],
)  # fmt: skip
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
        (tmp_path / "a-file" / "bench.json", f"error: --out: cannot write {tmp_path / 'a-file' / 'bench.json'}: "
                                              f"{tmp_path / 'a-file'} is not writable"),
    ]  # fmt: skip
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


def test_switches_are_bare_flags() -> None:
    """A bool field of BenchmarkConfig is a flag without a value; left out, the config default (off) holds."""
    assert build_parser().parse_args(["bench", "--compile"]).compile is True
    assert "compile" not in vars(build_parser().parse_args(["bench"]))
    assert BenchmarkConfig().compile is False
