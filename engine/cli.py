"""`python -m engine ...`: generate, info, study, serve and compress from a shell.

Every engine error becomes one line on stderr and exit code 1; bad
arguments exit 2 (argparse's convention). No tracebacks for user mistakes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import EngineError
from engine.formats import WEIGHT_FORMATS
from reports.history_flags import add_history_flags  # the CLI shell, not the engine core, keeps the history

if TYPE_CHECKING:
    from datetime import datetime

    from engine.batch.batch_engine import BatchEngine
    from engine.run.batch_generation import BatchGeneration, SpeculationFigures
    from engine.run.runtime import Engine, Generation, GenerationResult
    from engine.sampling import SamplingParams
    from engine.serving.options import ServerOptions
    from engine.studies.base import StudyOptions, StudyResult
    from reports.study_report import StudyReport


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="PATH.gguf", default=None, help="GGUF file (default: the bundled SmolLM2)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--no-weight-cache", action="store_true", help="convert from the GGUF, skip the disk cache")


def _add_weight_args(p: argparse.ArgumentParser, quant_help: str) -> None:
    """--quant and --weights: a format to convert the GGUF to, or a directory of compressed weights."""
    p.add_argument("--quant", choices=WEIGHT_FORMATS, default=None, help=f"{quant_help} (default: int4)")
    p.add_argument(
        "--weights",
        metavar="DIR",
        default=None,
        help="directory from `python -m engine compress` (brings its own format; --quant, if given, must match it)",
    )


def _add_decode_args(p: argparse.ArgumentParser, compile_help: str) -> None:
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


def _load_quant(args: argparse.Namespace) -> str | None:
    """The format to load: the one asked for, none with --weights (the directory's), else the int4 default."""
    return args.quant if args.quant is not None or args.weights is not None else "int4"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Preflight's bundled inference engine")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate text for one prompt")
    _add_model_args(gen)
    _add_weight_args(gen, "weight format")
    gen.add_argument("--prompt", required=True, help="prompt text (with --chat: the user message)")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.add_argument("--system", default=None, help="system message for --chat")
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--min-p", type=float, default=0.0)
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--logprobs", action="store_true", help="record the chosen tokens' logprobs")
    gen.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-sequence")
    gen.add_argument("--no-kv-cache", action="store_true", help="recompute the whole sequence every step")
    gen.add_argument(
        "--json", action="store_true", help="print one JSON object (text, token ids, timings, speculation)"
    )
    _add_speculative_args(gen)
    _add_decode_args(
        gen,
        "compiled decode step: the default where it works (CPU with a C++ compiler; built once per machine, "
        "about a minute, seconds after); elsewhere eager, with the reason on stderr",
    )

    info = sub.add_parser("info", help="architecture, sizes and weight formats of a model file")
    _add_model_args(info)
    info.add_argument("--json", action="store_true")

    study = sub.add_parser("study", help="run a measured optimization study: kv, quant, batch, precision or compress")
    _add_model_args(study)
    study.add_argument("name", choices=("kv", "quant", "batch", "precision", "compress"))
    study.add_argument("--quant", choices=WEIGHT_FORMATS, default="int4", help="format for the kv and batch studies")
    study.add_argument("--json", metavar="OUT", type=Path, default=None, help="also write the result as JSON")
    _add_study_size_args(study)
    add_history_flags(study)

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server (continuous batching)")
    _add_model_args(serve)
    _add_serve_args(serve)

    from engine.compress.command import add_compress_parser

    add_compress_parser(sub)
    return parser


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    """Flags of `serve`; the help text comes from ServerOptions' field descriptions."""
    from engine.serving.options import option_help as h

    _add_weight_args(p, "weight format")
    p.add_argument("--host", default="127.0.0.1", help=h("host"))
    p.add_argument("--port", type=int, default=8000, help=h("port"))
    p.add_argument("--api-key", default=None, metavar="KEY", help=h("api_key"))
    p.add_argument("--insecure", action="store_true", help=h("insecure"))
    p.add_argument("--served-model-name", default=None, metavar="NAME", help=h("served_model_name"))
    p.add_argument("--max-num-seqs", type=int, default=16, metavar="N", help=h("max_num_seqs"))
    p.add_argument("--max-model-len", type=int, default=None, metavar="N", help=h("max_model_len"))
    p.add_argument("--max-queue", type=int, default=64, metavar="N", help=h("max_queue"))
    p.add_argument("--kv-cache-bytes", type=int, default=None, metavar="N", help=h("kv_cache_bytes"))
    p.add_argument(
        "--rate-limit",
        dest="rate_limit_rpm",
        type=int,
        default=None,
        metavar="RPM",
        help=h("rate_limit_rpm") + " (default: off)",
    )
    p.add_argument("--rate-limit-burst", type=int, default=None, metavar="N", help=h("rate_limit_burst"))
    p.add_argument("--max-body-bytes", type=int, default=1024 * 1024, metavar="N", help=h("max_body_bytes"))
    p.add_argument("--max-connections", type=int, default=None, metavar="N", help=h("max_connections"))
    p.add_argument("--auth-failure-limit", type=int, default=None, metavar="N", help=h("auth_failure_limit"))
    p.add_argument(
        "--allowed-host", dest="allowed_hosts", action="append", default=[], metavar="NAME", help=h("allowed_hosts")
    )
    p.add_argument("--max-messages", type=int, default=None, metavar="N", help=h("max_messages"))
    p.add_argument("--max-stop-chars", type=int, default=None, metavar="N", help=h("max_stop_chars"))
    p.add_argument("--max-template-chars", type=int, default=None, metavar="N", help=h("max_template_chars"))
    p.add_argument(
        "--template-timeout",
        dest="template_timeout_s",
        type=float,
        default=None,
        metavar="S",
        help=h("template_timeout_s"),
    )
    _add_speculative_args(p)
    p.add_argument(
        "--cors-origin", dest="cors_origins", action="append", default=[], metavar="ORIGIN", help=h("cors_origins")
    )
    p.add_argument("--log-prompts", action="store_true", help=h("log_prompts"))
    p.add_argument("--threads", type=int, default=None, metavar="N", help=h("threads"))
    _add_decode_args(p, h("compile"))
    p.add_argument(
        "--grace-period", dest="grace_period_s", type=float, default=30.0, metavar="S", help=h("grace_period_s")
    )
    p.add_argument("--parent-pid", type=int, default=None, metavar="PID", help=h("parent_pid"))


def _add_speculative_args(p: argparse.ArgumentParser) -> None:
    """--speculative and --num-speculative-tokens, for `serve` and `generate` alike: ServerOptions checks both."""
    from engine.serving.options import option_help as h

    p.add_argument("--speculative", default="none", metavar="none|ngram|draft:FORMAT", help=h("speculative"))
    p.add_argument("--num-speculative-tokens", type=int, default=4, metavar="N", help=h("num_speculative_tokens"))


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


def _cmd_generate(args: argparse.Namespace) -> int:
    from engine.run.batch_generation import SpeculationFigures
    from engine.run.runtime import Engine, LoadOptions
    from engine.sampling import SamplingParams

    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=tuple(args.stop),
        logprobs=args.logprobs,
        ignore_eos=args.ignore_eos,
    )
    speculative = _speculative_options(args)  # checked before the weights load: a bad value fails in a moment
    engine = Engine.load(
        LoadOptions(_load_quant(args), args.model, args.device, not args.no_weight_cache, weights_dir=args.weights)
    )
    if args.compile and not args.no_kv_cache:  # without the cache no step runs compiled: nothing to build
        say = lambda line: print(line, file=sys.stderr)  # noqa: E731 - notes on stderr, the text on stdout
        # With speculation the server's batch engine decodes: its step kind (the paged cache) is the one compiled.
        reason = engine.compile_by_default(serving=speculative is not None, on_build=say)
        if reason is not None:
            say(f"eager decode: {reason}")
    prompt: str | list[dict] = args.prompt
    if args.chat:
        prompt = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}
        ]
    llm: BatchEngine | None = None
    gen: Generation | BatchGeneration
    if speculative is None:
        gen = engine.stream(prompt, params, chat=args.chat, use_kv_cache=not args.no_kv_cache)
    else:
        gen, llm = _speculative_stream(engine, speculative, prompt, params, args.chat)
        if engine.loaded.model.compiled:  # the server's rule: a draft of its own compiles after the target
            _compile_draft(llm)
    for delta in gen:
        if not args.json:
            sys.stdout.write(delta)
            sys.stdout.flush()
    result = gen.result
    if result is None:
        raise EngineError("generation ended without a result")
    figures = SpeculationFigures.of(llm, speculative.speculative) if llm is not None and speculative else None
    _report(args.json, engine, result, figures)
    return 0


def _report(as_json: bool, engine: Engine, result: GenerationResult, figures: SpeculationFigures | None) -> None:
    """After the text: one JSON object (--json), or a summary line (and one for speculation) on stderr."""
    if as_json:
        out = result.to_dict() | {"load": _load_dict(engine)}
        out["speculative"] = figures.to_dict() if figures is not None else None
        print(json.dumps(out, ensure_ascii=False))
        return
    sys.stdout.write("\n")
    rate = lambda v: f"{v:.1f}" if v is not None else "n/a"  # noqa: E731
    print(
        f"[{engine.info.weights_label} on {engine.info.device}, "
        f"load {engine.info.load_s:.2f}s ({engine.info.source}), "
        + (f"compile {engine.info.compile_s:.1f}s, " if engine.info.compile_s is not None else "")
        + f"prompt {result.prompt_tokens} tok at {rate(result.prefill_tok_s)} tok/s, "
        f"output {result.completion_tokens} tok at {rate(result.decode_tok_s)} tok/s, "
        f"finish {result.finish_reason}]",
        file=sys.stderr,
    )
    if figures is not None:
        print(_speculation_line(figures), file=sys.stderr)


def _speculative_options(args: argparse.Namespace) -> ServerOptions | None:
    """`generate --speculative` runs the server's batch engine, so the server's options say how (None: no speculation).

    ServerOptions checks the method, the format of a draft and k by the rules, and with the messages,
    of `serve`; one sequence at a time, nothing queued behind it.
    """
    from pydantic import ValidationError

    from engine.serving.options import ServerOptions, describe_options_error

    try:
        options = ServerOptions(
            model=args.model,
            device=args.device,
            use_weight_cache=not args.no_weight_cache,
            **({"quant": args.quant} if args.quant is not None else {}),
            weights=args.weights,
            max_num_seqs=1,
            max_queue=1,
            compile=args.compile,
            speculative=args.speculative,
            num_speculative_tokens=args.num_speculative_tokens,
        )
    except ValidationError as exc:
        raise ValueError(describe_options_error(exc)) from None
    if options.speculative_method.kind == "none":
        return None
    if args.no_kv_cache:
        raise ValueError(
            "--no-kv-cache cannot go with --speculative: drafts are verified against the KV cache; drop one of them"
        )
    return options


def _speculative_stream(
    engine: Engine, options: ServerOptions, prompt: str | list[dict], params: SamplingParams, chat: bool
) -> tuple[BatchGeneration, BatchEngine]:
    """The request alone in a batch engine built as the server builds one, its KV pool sized for this request."""
    from engine.run.batch_generation import BatchGeneration
    from engine.serving.state import build_batch_engine

    ids = engine.encode_prompt(prompt, chat)
    engine.check_fits(len(ids), params.max_tokens)
    llm = build_batch_engine(options.model_copy(update={"max_model_len": len(ids) + params.max_tokens}), engine.loaded)
    return BatchGeneration(llm, ids, params), llm


def _compile_draft(llm: BatchEngine) -> None:
    """The draft model's compiled step, as the server builds it; why it drafts eagerly on stderr when it cannot."""
    from engine.serving.state import compile_draft

    reason = compile_draft(llm, on_build=lambda note: print(f"draft model: {note}", file=sys.stderr))
    if reason is not None:
        print(f"draft model: eager decode: {reason}", file=sys.stderr)


def _speculation_line(figures: SpeculationFigures) -> str:
    """'speculative draft:int4 k=4: acceptance 97%, 3.9 tokens per target step' (stderr, after the text)."""
    head = f"speculative {figures.method} k={figures.num_speculative_tokens}"
    if figures.acceptance_rate is None or figures.tokens_per_target_step is None:
        return f"{head}: no drafts proposed"
    rate, per_step = figures.acceptance_rate, figures.tokens_per_target_step
    return f"{head}: acceptance {rate:.0%}, {per_step:.1f} tokens per target step"


def _load_dict(engine: Engine) -> dict[str, object]:
    info = engine.info
    return {
        "quant": info.quant,
        "weights_dir": info.weights_dir,
        "recipe": info.recipe,
        "device": info.device,
        "source": info.source,
        "load_s": info.load_s,
        "decode": info.decode,
        "compile_s": info.compile_s,
        "eager_reason": info.eager_reason,
        "weight_bytes": info.weight_bytes,
        "gguf_bytes": info.gguf_bytes,
        "kernel_notes": list(info.kernel_notes),
    }


def _cmd_info(args: argparse.Namespace) -> int:
    from engine.model.info import describe_model

    info = describe_model(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        from engine.model.info import format_model_info

        print(format_model_info(info))
    return 0


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


def _cmd_study(args: argparse.Namespace) -> int:
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


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    from pydantic import ValidationError

    from engine.serving.options import ServerOptions, describe_options_error

    fields = (
        "host",
        "port",
        "insecure",
        "served_model_name",
        "max_num_seqs",
        "max_model_len",
        "max_queue",
        "kv_cache_bytes",
        "rate_limit_rpm",
        "rate_limit_burst",
        "max_body_bytes",
        "speculative",
        "num_speculative_tokens",
        "log_prompts",
        "threads",
        "grace_period_s",
        "compile",
        "parent_pid",
    )
    # Limits default to None here, so that ServerOptions (and RequestLimits, TemplateLimits) own the defaults.
    limits = (
        "max_messages",
        "max_stop_chars",
        "max_template_chars",
        "template_timeout_s",
        "max_connections",
        "auth_failure_limit",
    )
    try:
        options = ServerOptions(
            model=args.model,
            device=args.device,
            use_weight_cache=not args.no_weight_cache,
            api_key=args.api_key if args.api_key is not None else os.environ.get("PREFLIGHT_API_KEY"),
            cors_origins=tuple(args.cors_origins),
            allowed_hosts=tuple(args.allowed_hosts),
            **({"quant": args.quant} if args.quant is not None else {}),
            weights=args.weights,
            **{name: getattr(args, name) for name in fields},
            **{name: getattr(args, name) for name in limits if getattr(args, name) is not None},
        )
    except ValidationError as exc:
        raise ValueError(describe_options_error(exc)) from None
    from engine.model.gguf_file import resolve_model_path
    from engine.serving.app import run_server

    resolve_model_path(options.model)  # a missing file is one line now, not after binding the port
    return run_server(options)


def _cmd_compress(args: argparse.Namespace) -> int:
    from engine.compress.command import run_compress

    return run_compress(args)


COMMANDS = {
    "generate": _cmd_generate,
    "info": _cmd_info,
    "study": _cmd_study,
    "serve": _cmd_serve,
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
