"""`python -m checks bench ...`: benchmark the bundled engine or any OpenAI-compatible endpoint.

Flags come from `BenchmarkConfig`'s fields (their descriptions are the help text), so
the CLI and the Benchmark page cannot drift apart. Errors are one stderr line and exit
code 1 (a target that cannot be used, a bad file) or 2 (bad flags, an `--out` that
cannot be written, found before the run rather than after it); no tracebacks.
`--out` writes the `BenchmarkResult` document atomically through `reports.store`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from checks.load.benchmark import BenchmarkConfig, config_error, run_benchmark
from checks.load.console import format_result
from checks.load.loadgen import Progress
from checks.load.targets import TargetError
from reports import store

API_KEY_ENV = "PREFLIGHT_TARGET_API_KEY"
SKIP_FLAGS = {"api_key", "duration_s"}  # spelled by hand below
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m checks", description="Preflight measurements.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmark a target under load and write the records as JSON")
    for name, field in BenchmarkConfig.model_fields.items():
        if name in SKIP_FLAGS:
            continue
        flag = "--" + name.replace("_", "-")
        default = field.default
        if isinstance(default, bool):  # an off-by-default switch: the flag alone turns it on
            bench.add_argument(flag, dest=name, action="store_true", default=argparse.SUPPRESS, help=field.description)
            continue
        kind = {int: int, float: float}.get(type(default)) if default is not None else None
        if kind is None:
            ann = str(field.annotation)
            kind = int if "int" in ann and "str" not in ann else float if "float" in ann else str
        help_text = (field.description or "") + (f" (default: {default})" if default is not None else "")
        bench.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, help=help_text)
    bench.add_argument("--duration", dest="duration_s", type=parse_duration, default=argparse.SUPPRESS,
                       help="measured time per run, e.g. 60s or 2m (with --requests, whichever ends first)")
    bench.add_argument("--api-key", dest="api_key", default=argparse.SUPPRESS,
                       help=f"API key of a remote endpoint (or set {API_KEY_ENV}; never written to results)")
    bench.add_argument("--out", type=Path, default=None, help="write the result JSON (with every record) here")
    bench.add_argument("--quiet", action="store_true", help="no progress line")
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


def bench(args: argparse.Namespace) -> int:
    values = {k: v for k, v in vars(args).items() if k not in ("command", "out", "quiet")}
    if "api_key" not in values and os.environ.get(API_KEY_ENV):
        values["api_key"] = os.environ[API_KEY_ENV]
    if "duration_s" in values and "requests" not in values:
        values["requests"] = None  # a duration alone bounds the run
    try:
        config = BenchmarkConfig(**values)
    except ValidationError as exc:
        print(f"error: {config_error(exc)}", file=sys.stderr)
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
        result = run_benchmark(config, progress=progress, cancel=cancel, on_status=status)
    except KeyboardInterrupt:
        line.end()
        print("interrupted", file=sys.stderr)
        return 130
    except (TargetError, ValueError, OSError) as exc:
        line.end()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    line.end()
    print(format_result(result))
    if args.out is not None:
        try:
            store.save(result, args.out, overwrite=True)
        except store.DocumentError as exc:  # checked at start, but the disk can fill or the folder go meanwhile
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "bench":
        return bench(args)
    return 2
