"""`python -m engine study NAME`: run a measured study, print it, and keep it in the reports history.

This is the engine's one shell around `reports`: a finished study becomes a StudyReport whose
`command` repeats it (`study_command`), the same document the Engine studies page saves
(`study_document`). Each size flag maps to a StudyOptions field (STUDY_SIZE_FLAGS), which gives its help.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from engine.formats import WEIGHT_FORMATS
from reports.history_flags import add_history_flags  # the CLI shell, not the engine core, keeps the history

if TYPE_CHECKING:
    from datetime import datetime

    from engine.studies.base import StudyOptions, StudyResult
    from reports.study_report import StudyReport

# Study size flags -> StudyOptions fields; the help text comes from the field.
STUDY_SIZE_FLAGS = {
    "--threads": ("threads", "N"),
    "--lengths": ("kv_lengths", "N,N,..."),
    "--tokens": ("kv_tokens", "N"),
    "--batch-sizes": ("batch_sizes", "N,N,..."),
    "--batch-prompt-tokens": ("batch_prompt_tokens", "N"),
    "--steps": ("batch_steps", "N"),
    "--formats": ("quant_formats", "FMT,FMT,..."),
    "--prompt-tokens": ("quant_prompt_tokens", "N"),
    "--decode-tokens": ("quant_decode_tokens", "N"),
    "--eval-tokens": ("eval_max_tokens", "N"),
    "--eval-window": ("eval_window", "N"),
    "--schemes": ("precision_schemes", "S,S,..."),
    "--act-tokens": ("precision_act_tokens", "N"),
    "--settings": ("compress_settings", "S,S,..."),
}


def add_study_args(p: argparse.ArgumentParser) -> None:
    """Flags of `study` after the model's: which study, its format, its sizes and the history flags."""
    p.add_argument("name", choices=("kv", "quant", "batch", "precision", "compress"))
    p.add_argument("--quant", choices=WEIGHT_FORMATS, default="int4", help="format for the kv and batch studies")
    p.add_argument("--json", metavar="OUT", type=Path, default=None, help="also write the result as JSON")
    _add_study_size_args(p)
    add_history_flags(p)


def _arg_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    """Wrap a parser so argparse prints its ValueError message as the usage error."""

    def parse_arg(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return parse_arg


def _add_study_size_args(p: argparse.ArgumentParser) -> None:
    from engine.studies.base import option_help, parse_formats, parse_schemes, parse_settings, parse_sizes

    types = {"kv_lengths": _arg_type(parse_sizes), "batch_sizes": _arg_type(parse_sizes)}
    types["quant_formats"] = _arg_type(parse_formats)
    types["precision_schemes"] = _arg_type(parse_schemes)
    types["compress_settings"] = _arg_type(parse_settings)
    for flag, (name, metavar) in STUDY_SIZE_FLAGS.items():
        p.add_argument(flag, dest=name, metavar=metavar, type=types.get(name, int), help=option_help(name))
    p.add_argument("--no-cold-load", action="store_true", help="quant: skip the cold (GGUF conversion) load timing")


def study_command(name: str, options: StudyOptions) -> str:
    """The `python -m engine study` command line that repeats a study with these options (defaults left out)."""
    import shlex

    from engine.studies.base import StudyOptions

    default = StudyOptions()
    argv = ["python", "-m", "engine", "study", name]
    if options.model_path is not None:
        argv += ["--model", options.model_path]
    if options.device != default.device:
        argv += ["--device", options.device]
    if not options.use_cache:
        argv.append("--no-weight-cache")
    if name not in ("quant", "precision", "compress") and options.quant != default.quant:
        argv += ["--quant", options.quant]
    for flag, (field, _) in STUDY_SIZE_FLAGS.items():
        value = getattr(options, field)
        if value != getattr(default, field):
            argv += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    if name == "quant" and not options.quant_cold_load:
        argv.append("--no-cold-load")
    return shlex.join(argv)


def study_document(
    name: str, options: StudyOptions, result: StudyResult, started_at: datetime, label: str | None = None
) -> StudyReport:
    """The history document of a finished study: what the CLI saves and the Engine studies page keeps."""
    from datetime import UTC, datetime

    from engine.studies.registry import TITLES
    from reports.study_report import StudyReport
    from reports.version import __version__

    return StudyReport.from_study(
        result.to_dict(),
        title=TITLES[name],
        command=study_command(name, options),
        started_at=started_at,
        finished_at=datetime.now(UTC),
        label=label,
        tool_version=__version__,
    )


def run_study(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from engine.studies.registry import STUDIES, StudyOptions, format_study
    from reports.history_flags import save_to_history

    sizes = {name: getattr(args, name) for name, _ in STUDY_SIZE_FLAGS.values() if getattr(args, name) is not None}
    options = StudyOptions(
        model_path=args.model,
        quant=args.quant,
        device=args.device,
        use_cache=not args.no_weight_cache,
        quant_cold_load=not args.no_cold_load,
        **sizes,
    )
    started = datetime.now(UTC)
    result = STUDIES[args.name](options, progress=lambda msg: print(msg, file=sys.stderr))
    print(format_study(result))
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
    save_to_history(study_document(args.name, options, result, started, args.label), args)
    return 0
