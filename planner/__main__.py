"""`python -m planner detect | recommend | predict | calibrate | compare`: what this machine offers, what to
serve a model with, one configuration predicted, the planner fitted to measured benchmark results, and how
the planner's CPU prediction compares with a measured run.

Planner errors become one line on stderr and exit 1; bad arguments and unreadable model files exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from planner.calibration import DEFAULT_PASS_SPREAD, CalibrationRun
from planner.errors import PlannerError, first_problem
from planner.hardware import detect, summary_lines
from planner.predict_io import PredictOptions
from planner.workload import RecommendOptions

# CLI flag -> RecommendOptions field; help text comes from the field's description.
RECOMMEND_FLAGS = {
    "--model": ("model", str),
    "--gpu": ("gpu", str),
    "--gpus": ("gpus", int),
    "--engine-version": ("engine_version", str),
    "--vllm-sampler": ("vllm_sampler", str),
    "--tp-transport": ("tp_transport", str),
    "--cuda-graph-reserve-gib": ("cuda_graph_reserve_gib", float),
    "--context": ("context", int),
    "--concurrency": ("concurrency", int),
    "--input-tokens": ("input_tokens", int),
    "--cached-input-tokens": ("cached_input_tokens", int),
    "--output-tokens": ("output_tokens", int),
    "--slo": ("slo", str),
    "--qps": ("qps", float),
    "--price-per-hour": ("price_per_hour", float),
    "--calibration": ("calibration", str),
    "--max-config-bytes": ("max_config_bytes", int),
}

# CLI flag -> PredictOptions field (bool fields get --flag / --no-flag).
PREDICT_FLAGS = {
    "--model": ("model", str),
    "--gpu": ("gpu", str),
    "--gpus": ("gpus", int),
    "--tp": ("tp", int),
    "--pp": ("pp", int),
    "--engine": ("engine", str),
    "--engine-version": ("engine_version", str),
    "--format": ("format", str),
    "--kv-cache-dtype": ("kv_cache_dtype", str),
    "--vllm-sampler": ("vllm_sampler", str),
    "--tp-transport": ("tp_transport", str),
    "--cuda-graph-reserve-gib": ("cuda_graph_reserve_gib", float),
    "--gpu-memory-utilization": ("gpu_memory_utilization", float),
    "--max-num-seqs": ("max_num_seqs", int),
    "--max-num-batched-tokens": ("max_num_batched_tokens", int),
    "--max-model-len": ("max_model_len", int),
    "--enable-chunked-prefill": ("enable_chunked_prefill", bool),
    "--input-tokens": ("input_tokens", int),
    "--cached-input-tokens": ("cached_input_tokens", int),
    "--output-tokens": ("output_tokens", int),
    "--concurrency": ("concurrency", int),
    "--qps": ("qps", float),
    "--requests": ("requests", int),
    "--calibration": ("calibration", str),
    "--max-config-bytes": ("max_config_bytes", int),
}


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="memory, latency and throughput of one configuration (JSON with --json)")
    fields = PredictOptions.model_fields
    for flag, (name, kind) in PREDICT_FLAGS.items():
        f = fields[name]
        shown = "" if f.is_required() or f.default is None else f" (default: {f.default})"
        if kind is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=f.description)
            continue
        p.add_argument(
            flag, dest=name, type=kind, required=f.is_required(), default=None, help=f"{f.description}{shown}"
        )
    p.add_argument("--json", action="store_true", help="print the prediction as one JSON object")


def _spread(text: str) -> float | Literal["measured"]:
    if text == "measured":
        return "measured"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'measured', not {text!r}") from None


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit predict's efficiencies and per-step cost to saved benchmark results")
    p.add_argument("--measured", required=True, metavar="RESULT.json", help="a `python -m checks bench` result")
    p.add_argument("--more", nargs="+", default=[], metavar="RESULT.json", help="more results to fit on")
    p.add_argument("--hold-out", nargs="+", default=[], metavar="RESULT.json", help="results only checked, not fitted")
    p.add_argument("--out", required=True, metavar="CALIBRATION.json", help="where to write the calibration")
    p.add_argument("--model", help="remote targets: the model served (catalog id, config.json or .gguf)")
    p.add_argument("--gpu", help="remote targets (and a bundled run on a GPU): the GPU it ran on")
    p.add_argument("--engine", help="remote targets: the engine that served (vllm, sglang, ...)")
    p.add_argument("--format", help="remote targets: the weight format served (bf16, awq-int4, ...)")
    version = CalibrationRun.model_fields["engine_version"].description
    p.add_argument("--engine-version", help=f"remote targets: {version}")
    p.add_argument(
        "--pass-spread",
        type=_spread,
        default=DEFAULT_PASS_SPREAD,
        metavar="SD|measured",
        help="scatter each replayed pass's time by this sd of ln, or by the fit runs' ('measured', the default: "
        "their inter-token gaps at the lowest concurrency); 0 replays exact prices",
    )
    p.add_argument(
        "--step-log",
        nargs="+",
        default=[],
        metavar="STEPS.jsonl",
        help="the fit runs' servers' step logs (`serve --step-log`, or `checks bench --step-log` on a bundled "
        "target): pass prices are fitted to the logged passes, the rest to the runs",
    )
    p.add_argument(
        "--hold-out-step-log",
        nargs="+",
        default=[],
        metavar="STEPS.jsonl",
        help="held-out runs' servers' step logs: their passes are priced at the fitted prices, which tells a "
        "held-out miss in the prices from one in the arrangement of passes",
    )
    p.add_argument("--json", action="store_true", help="print the calibration document instead of the table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m planner", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_detect = sub.add_parser("detect", help="detect CPU, ISA, RAM, disk, NVIDIA GPUs (NVML) and torch backends")
    p_detect.add_argument("--json", action="store_true", help="print the Hardware record as JSON")

    p_rec = sub.add_parser("recommend", help="ranked serving options for a model on some hardware")
    fields = RecommendOptions.model_fields
    for flag, (name, kind) in RECOMMEND_FLAGS.items():
        f = fields[name]
        default = None if f.is_required() else f.default
        shown = "" if default is None else f" (default: {default})"
        p_rec.add_argument(
            flag, dest=name, type=kind, required=f.is_required(), default=default, help=f"{f.description}{shown}"
        )
    p_rec.add_argument("--top", type=int, default=10, help="table rows to print (default: 10)")
    p_rec.add_argument("--json", action="store_true", help="print the whole plan as JSON")

    _add_predict(sub)
    _add_calibrate(sub)

    p_cmp = sub.add_parser("compare", help="predicted vs measured for a bundled-engine run on this CPU")
    p_cmp.add_argument(
        "--measured",
        required=True,
        metavar="RUN.json",
        help="output of `python -m engine generate --json --device cpu ...` ('-' reads stdin)",
    )
    p_cmp.add_argument("--model", default="smollm2-135m", help="model the run used (default: smollm2-135m)")
    p_cmp.add_argument("--json", action="store_true", help="print the comparison as JSON")
    return parser


def _cmd_detect(args: argparse.Namespace) -> int:
    hw = detect()
    if args.json:
        print(json.dumps(hw.to_dict(), indent=2))
        return 0
    for line in summary_lines(hw):
        print(line)
    for note in hw.notes:
        print(f"note: {note}")
    return 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    from planner.entrypoints import make_plan
    from planner.report import format_plan

    values = {name: getattr(args, name) for name, _ in RECOMMEND_FLAGS.values() if getattr(args, name) is not None}
    opts = RecommendOptions(**values)
    plan = make_plan(opts)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2, default=str))
    else:
        print("\n".join(format_plan(plan, top=args.top)))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from planner.entrypoints import predict_one
    from planner.predict_io import format_result

    values = {name: getattr(args, name) for name, _ in PREDICT_FLAGS.values() if getattr(args, name) is not None}
    result = predict_one(PredictOptions(**values))
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print("\n".join(format_result(result)))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from planner.calibrate import calibrate, format_fit
    from planner.calibrate_cli import ServedBy, load_runs
    from planner.calibration import save_calibration

    served = ServedBy(args.model, args.gpu, args.engine, args.format, args.engine_version)
    runs = load_runs([args.measured, *args.more], served)
    held_out = load_runs(args.hold_out, served)
    doc = calibrate(
        runs,
        held_out,
        pass_spread=args.pass_spread,
        step_logs=args.step_log,
        held_out_step_logs=args.hold_out_step_log,
    )
    out = save_calibration(doc, args.out)
    if args.json:
        print(doc.model_dump_json(indent=2))
    else:
        print("\n".join([*format_fit(doc), f"wrote {out}"]))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from planner.compare import format_comparison
    from planner.entrypoints import compare_run

    try:
        text = sys.stdin.read() if args.measured == "-" else Path(args.measured).read_text()
        data = json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        raise PlannerError(f"cannot read the measured run {args.measured}: {exc}") from exc
    result = compare_run(data, args.model)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print("\n".join(format_comparison(result)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "detect": _cmd_detect,
        "recommend": _cmd_recommend,
        "predict": _cmd_predict,
        "calibrate": _cmd_calibrate,
        "compare": _cmd_compare,
    }
    try:
        return commands[args.command](args)
    except ValidationError as exc:
        print(f"error: {first_problem(exc)}", file=sys.stderr)
        return 2
    except PlannerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
