"""`python -m checks bench|run|connect`: benchmark, judge or test a connection to the bundled engine
or any OpenAI-compatible endpoint.

Flags come from `BenchmarkConfig`'s fields (their descriptions are the help text), so
the CLI and the Benchmark page cannot drift apart. Errors are one stderr line and exit
code 1 (a target that cannot be used, a bad file) or 2 (bad flags, an `--out` that
cannot be written, found before the run rather than after it); no tracebacks.
`--out` writes the `BenchmarkResult` document atomically through `reports.store`.

Ctrl-C (SIGINT) never throws away a measurement: once the load runs, the first one
stops it cleanly and the records measured so far are printed and saved, marked
cancelled (`bench` then exits 130; `run` writes its report, whose unrun checks make it
INCOMPLETE). A second Ctrl-C, or one while the target is still starting, aborts.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError

from checks.connection import connect, format_connection
from checks.load.benchmark import BenchmarkConfig, config_error, make_target, measure
from checks.load.console import format_result
from checks.load.loadgen import Progress
from checks.load.targets import TargetError
from checks.load.traces import TraceError, load_trace
from checks.presets import PRESETS
from checks.readiness.config import ChecklistConfig
from checks.readiness.console import format_report
from checks.readiness.runner import Checklist, ChecklistProgress
from checks.readiness.slo import SloProfileError
from reports import store
from reports.benchmark_result import BenchmarkResult
from reports.exports import export
from reports.history_flags import HISTORY_FLAGS, add_history_flags, save_to_history
from reports.readiness_report import ReadinessReport
from reports.store import DocumentError, check_writable, save, write_text
from reports.verdict import exit_code

API_KEY_ENV = "PREFLIGHT_TARGET_API_KEY"
SKIP_FLAGS = {"api_key", "duration_s", "trace_window_s"}  # spelled by hand below
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """'90', '90s', '1.5m', '2h', '500ms' -> seconds."""
    m = DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: use e.g. 60s, 2m or 500ms")
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]
    return float(m.group(1)) * scale


class UsageError(Exception):
    """A bad command line; `main` prints it as one `error:` line and returns 2."""


class _Parser(argparse.ArgumentParser):
    """argparse prints the whole usage and exits; here a bad flag is one line and an exit code."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def add_model_flags(
    parser: argparse.ArgumentParser, model: type[BaseModel], skip: set[str], renames: dict[str, str] | None = None
) -> None:
    """One flag per field of a boundary model, its description as the help: CLI and page share one definition."""
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        flag = (renames or {}).get(name) or "--" + name.replace("_", "-")
        default = field.default
        if isinstance(default, bool):  # off by default: the flag alone turns it on; on by default: --no-X turns it off
            action = argparse.BooleanOptionalAction if default else "store_true"
            parser.add_argument(flag, dest=name, action=action, default=argparse.SUPPRESS, help=field.description)
            continue
        kind = {int: int, float: float}.get(type(default)) if default is not None else None
        if kind is None:
            ann = str(field.annotation)
            kind = int if "int" in ann and "str" not in ann else float if "float" in ann else str
        help_text = (field.description or "") + (f" (default: {default})" if default is not None else "")
        parser.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, help=help_text)


D = TypeVar("D", BenchmarkResult, ReadinessReport)
EXPORT_FLAGS = {"junit": "junit", "markdown": "md", "html": "html"}  # `run` flag -> reports.exports format


def _labelled(doc: D, args: argparse.Namespace) -> D:
    return doc if args.label is None else doc.model_copy(update={"label": args.label})


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m checks", description="Preflight measurements and readiness checks.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmark a target under load and write the records as JSON")
    add_model_flags(bench, BenchmarkConfig, SKIP_FLAGS)
    for flag, dest, help_text in (
        ("--duration", "duration_s", "measured time per run, e.g. 60s or 2m (with --requests, whichever ends first)"),
        ("--trace-window", "trace_window_s", "replay only this much trace time, e.g. 10m (before --trace-speed)"),
    ):  # durations in words; the config keeps seconds
        bench.add_argument(flag, dest=dest, type=parse_duration, default=argparse.SUPPRESS, help=help_text)
    bench.add_argument(
        "--api-key",
        dest="api_key",
        default=argparse.SUPPRESS,
        help=f"API key of a remote endpoint (or set {API_KEY_ENV}; never written to results)",
    )
    bench.add_argument(
        "--compile",
        dest="legacy_compile",
        action="store_true",
        help="bundled target: compiled decode, the default now (kept so that old command lines work; --eager opts out)",
    )
    bench.add_argument("--out", type=Path, default=None, help="write the result JSON (with every record) here")
    add_history_flags(bench)
    bench.add_argument("--quiet", action="store_true", help="no progress line")
    run = sub.add_parser("run", help="run the readiness checklist and give a verdict (exit 0 ready, 1 not, 2 unknown)")
    add_model_flags(run, ChecklistConfig, {"api_key"}, {"from_path": "--from", "plan_path": "--plan"})
    run.add_argument(
        "--api-key",
        dest="api_key",
        default=argparse.SUPPRESS,
        help=f"API key of a remote endpoint (or set {API_KEY_ENV}; never written to reports)",
    )
    run.add_argument("--out", type=Path, default=None, help="write the readiness report (JSON) here")
    run.add_argument("--junit", type=Path, default=None, help="also write the checks as JUnit XML")
    run.add_argument("--markdown", type=Path, default=None, help="also write the report as Markdown")
    run.add_argument("--html", type=Path, default=None, help="also write the report as one offline HTML page")
    add_history_flags(run)
    run.add_argument("--force", action="store_true", help="overwrite existing output files")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    conn = sub.add_parser("connect", help="test a target before measuring it: models, key, streaming, /metrics")
    conn.add_argument("target", nargs="?", default=None, help="the base URL (default: the --preset's local URL)")
    conn.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="a server kind: its default local URL, and what it needs for /metrics",
    )
    conn.add_argument(
        "--api-key", dest="api_key", default=None, help=f"the endpoint's API key (or set {API_KEY_ENV}; never printed)"
    )
    conn.add_argument("--model", default=None, help="model for the probe request (default: the first listed)")
    conn.add_argument("--api", choices=("chat", "completions"), default="chat")
    conn.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


class _ProgressLine:
    """One progress line redrawn in place on stderr; `end()` moves past it, if it was drawn at all."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.drawn = False

    def __call__(self, p: Progress) -> None:
        total = f"/{p.total}" if p.total else ""
        self.stream.write(
            f"\r[{p.phase}] {p.completed}{total} done, {p.failed} failed, {p.in_flight} in flight, "
            f"{p.output_tokens} tokens, {p.elapsed_s:.1f} s   "
        )
        self.stream.flush()
        self.drawn = True

    def end(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.drawn = False


class _Interrupts:
    """The SIGINT policy of a CLI run (see the module docstring), for the life of a `with` block.

    Until `graceful` is set a Ctrl-C aborts, as Python's default does: nothing is measured yet.
    Then the first one only sets `cancel`, which the load generator and the checklist watch, and
    a second one aborts. The handler prints nothing: a write from a signal handler can land in
    the middle of the progress line's write to the same stream, which Python refuses.
    """

    def __init__(self, cancel: threading.Event, graceful: bool = False) -> None:
        self.cancel = cancel
        self.graceful = graceful
        self._previous: Any = None

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, _signum: int, _frame: object) -> None:
        if not self.graceful or self.cancel.is_set():
            raise KeyboardInterrupt
        self.cancel.set()


STOPPED = "stopped by Ctrl-C: the requests measured until then are kept, marked cancelled"


def bench(args: argparse.Namespace) -> int:
    skip = ("command", "out", "quiet", "legacy_compile", *HISTORY_FLAGS)
    values = {k: v for k, v in vars(args).items() if k not in skip}
    if "api_key" not in values and os.environ.get(API_KEY_ENV):
        values["api_key"] = os.environ[API_KEY_ENV]
    if "duration_s" in values and "requests" not in values:
        values["requests"] = None  # a duration alone bounds the run
    try:
        config = BenchmarkConfig(**values)
    except ValidationError as exc:
        print(f"error: {config_error(exc)}", file=sys.stderr)
        return 2
    if config.trace:
        try:  # a trace the run cannot replay fails here, before a server is started for it
            load_trace(config.trace, limit=1, block_tokens=config.trace_block_tokens)
        except TraceError as exc:
            print(f"error: --trace: {exc}", file=sys.stderr)
            return 2
    if args.out is not None:
        try:  # a long run must not end in a path it cannot write
            store.check_writable(args.out, overwrite=True)
        except store.DocumentError as exc:
            print(f"error: --out: {exc}", file=sys.stderr)
            return 2
    cancel = threading.Event()
    line = _ProgressLine(sys.stderr)
    progress = None if args.quiet else line

    def show_status(message: str) -> None:
        line.end()
        print(message, file=sys.stderr)

    status = None if args.quiet else show_status
    try:
        with _Interrupts(cancel) as interrupts:
            target = make_target(config, status or (lambda _msg: None))
            with target as endpoint:
                interrupts.graceful = True  # from here on there is something to save
                result = measure(config, endpoint, target, progress=progress, cancel=cancel, on_status=status)
    except KeyboardInterrupt:
        line.end()
        print("interrupted", file=sys.stderr)
        return 130
    except (TargetError, ValueError, OSError) as exc:
        line.end()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    line.end()
    result = _labelled(result, args)
    print(format_result(result))
    save_to_history(result, args)
    if args.out is not None:
        try:
            store.save(result, args.out, overwrite=True)
        except store.DocumentError as exc:  # checked at start, but the disk can fill or the folder go meanwhile
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {args.out}", file=sys.stderr)
    if cancel.is_set():
        print(STOPPED, file=sys.stderr)
        return 130
    return 0


def readiness(args: argparse.Namespace) -> int:
    """`python -m checks run`: the checklist, its console view, the files; the exit code is the verdict's."""
    skip = ("command", "out", "force", "quiet", *EXPORT_FLAGS, *HISTORY_FLAGS)
    values = {k: v for k, v in vars(args).items() if k not in skip}
    if "api_key" not in values and os.environ.get(API_KEY_ENV):
        values["api_key"] = os.environ[API_KEY_ENV]
    try:
        config = ChecklistConfig(**values)
        outputs = [p for p in (args.out, *(getattr(args, flag) for flag in EXPORT_FLAGS)) if p is not None]
        for path in outputs:
            check_writable(path, overwrite=args.force)
        cancel = threading.Event()
        checklist = Checklist(
            config,
            progress=None if args.quiet else _checklist_line,
            cancel=cancel,
            on_status=None if args.quiet else _say,
        )
    except ValidationError as exc:
        print(f"error: {config_error(exc)}", file=sys.stderr)
        return 2
    except (ValueError, DocumentError, SloProfileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with _Interrupts(cancel, graceful=True):  # the checklist turns a cancel into unrun checks and still reports
            report = checklist.run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 2
    report = _labelled(report, args)
    print(format_report(report))
    save_to_history(report, args)
    try:
        if args.out is not None:
            save(report, args.out, overwrite=args.force)
        for flag, fmt in EXPORT_FLAGS.items():
            if getattr(args, flag) is not None:
                write_text(getattr(args, flag), export(report, fmt), overwrite=args.force)
    except DocumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in outputs:
        print(f"wrote {path}", file=sys.stderr)
    if cancel.is_set():
        print(STOPPED, file=sys.stderr)
    return exit_code(report.verdict)


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _checklist_line(p: ChecklistProgress) -> None:
    """What runs now; the console block after the run lists every result. The load's many ticks are not printed:
    its status lines say when it starts and what it runs."""
    if p.current and p.phase != "load":
        print(f"[{p.done + 1}/{p.total}] {p.phase}: {p.current}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "bench":
        return bench(args)
    if args.command == "run":
        return readiness(args)
    if args.command == "connect":
        return connect_command(args)
    return 2


def connect_command(args: argparse.Namespace) -> int:
    """`python -m checks connect`: exit 0 when the target is ready to measure, 1 when not, 2 on bad input."""
    preset = PRESETS[args.preset] if args.preset else None
    url = args.target or (preset.base_url if preset else None)
    if url is None:
        print("error: give a target URL or a --preset", file=sys.stderr)
        return 2
    try:
        report = connect(url, args.api_key or os.environ.get(API_KEY_ENV) or None, args.model, args.api)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.model_dump_json(indent=1) if args.json else format_connection(report))
    if preset is not None and not args.json:
        print(f"note          {preset.name}: {preset.metrics_hint}")
    return 0 if report.ok else 1
