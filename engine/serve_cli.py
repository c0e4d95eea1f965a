"""`python -m engine serve`: the flags of the OpenAI-compatible server, turned into ServerOptions.

ServerOptions owns every rule and default (its field descriptions are the flags' help), so this
module only maps flags to fields; the server itself is imported when it starts, not for `--help`.
"""

from __future__ import annotations

import argparse

from engine.cli_args import add_decode_args, add_speculative_args, add_weight_args


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """Flags of `serve` after the model's; the help text comes from ServerOptions' field descriptions."""
    from engine.serving.options import option_help as h

    add_weight_args(p, "weight format")
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
    add_speculative_args(p)
    p.add_argument(
        "--cors-origin", dest="cors_origins", action="append", default=[], metavar="ORIGIN", help=h("cors_origins")
    )
    p.add_argument("--log-prompts", action="store_true", help=h("log_prompts"))
    p.add_argument("--step-log", default=None, metavar="FILE", help=h("step_log"))
    p.add_argument("--threads", type=int, default=None, metavar="N", help=h("threads"))
    add_decode_args(p, h("compile"))
    p.add_argument(
        "--grace-period", dest="grace_period_s", type=float, default=30.0, metavar="S", help=h("grace_period_s")
    )
    p.add_argument("--parent-pid", type=int, default=None, metavar="PID", help=h("parent_pid"))


def run_serve(args: argparse.Namespace) -> int:
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
        "step_log",
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
