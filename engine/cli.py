"""`python -m engine ...`: generate, info, study, serve and compress from a shell.

This module is the parser and the dispatch; each command's flags and work live in a module of
its own (generate_cli, study_cli, serve_cli, compress/command), the flags they share in cli_args.
Every engine error becomes one line on stderr and exit code 1; bad
arguments exit 2 (argparse's convention). No tracebacks for user mistakes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from engine.cli_args import add_model_args
from engine.errors import EngineError
from engine.generate_cli import add_generate_args, run_generate
from engine.serve_cli import add_serve_args, run_serve
from engine.study_cli import add_study_args, run_study


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Preflight's bundled inference engine")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate text for one prompt")
    add_model_args(gen)
    add_generate_args(gen)

    info = sub.add_parser("info", help="architecture, sizes and weight formats of a model file")
    add_model_args(info)
    info.add_argument("--json", action="store_true")

    study = sub.add_parser("study", help="run a measured optimization study: kv, quant, batch, precision or compress")
    add_model_args(study)
    add_study_args(study)

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server (continuous batching)")
    add_model_args(serve)
    add_serve_args(serve)

    from engine.compress.command import add_compress_parser

    add_compress_parser(sub)
    return parser


def _cmd_info(args: argparse.Namespace) -> int:
    from engine.model.info import describe_model

    info = describe_model(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        from engine.model.info import format_model_info

        print(format_model_info(info))
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    from engine.compress.command import run_compress

    return run_compress(args)


COMMANDS = {
    "generate": run_generate,
    "info": _cmd_info,
    "study": run_study,
    "serve": run_serve,
    "compress": _cmd_compress,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (EngineError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
