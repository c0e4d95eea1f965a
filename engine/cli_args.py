"""The flags more than one `python -m engine` command takes, defined once so their help and defaults agree.

`--model`/`--device` (every command that loads a model), `--quant`/`--weights` and `--eager`
(generate and serve), `--speculative` (generate and serve, both checked by ServerOptions).
Only argparse and the format list at import time: `--help` stays fast.
"""

from __future__ import annotations

import argparse

from engine.formats import WEIGHT_FORMATS


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="PATH.gguf", default=None, help="GGUF file (default: the bundled SmolLM2)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--no-weight-cache", action="store_true", help="convert from the GGUF, skip the disk cache")


def add_weight_args(p: argparse.ArgumentParser, quant_help: str) -> None:
    """--quant and --weights: a format to convert the GGUF to, or a directory of compressed weights."""
    p.add_argument("--quant", choices=WEIGHT_FORMATS, default=None, help=f"{quant_help} (default: int4)")
    p.add_argument(
        "--weights",
        metavar="DIR",
        default=None,
        help="directory from `python -m engine compress` (brings its own format; --quant, if given, must match it)",
    )


def load_quant(args: argparse.Namespace) -> str | None:
    """The format to load: the one asked for, none with --weights (the directory's), else the int4 default."""
    return args.quant if args.quant is not None or args.weights is not None else "int4"


def add_decode_args(p: argparse.ArgumentParser, compile_help: str) -> None:
    """--eager opts out of compiled decode, the default wherever it works; --compile stays for old command lines."""
    p.add_argument(
        "--eager",
        dest="compile",
        action="store_false",
        help="eager decode: skip the compiled decode step (no build, slower decode)",
    )
    p.add_argument(
        "--compile",
        dest="compile",
        action="store_true",
        default=True,
        help=compile_help + " (kept so that old command lines work)",
    )


def add_speculative_args(p: argparse.ArgumentParser) -> None:
    """--speculative and --num-speculative-tokens, for `serve` and `generate` alike: ServerOptions checks both."""
    from engine.serving.options import option_help as h

    p.add_argument("--speculative", default="none", metavar="none|ngram|draft:FORMAT", help=h("speculative"))
    p.add_argument("--num-speculative-tokens", type=int, default=4, metavar="N", help=h("num_speculative_tokens"))
