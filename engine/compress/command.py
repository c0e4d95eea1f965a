"""`python -m engine compress METHOD ... --out DIR`: write a compressed model as a weights directory.

    python -m engine compress gptq --group 128 [--act-order] --out DIR
    python -m engine compress rtn --group 128 --out DIR
    python -m engine compress prune --sparsity 0.5 | --pattern 2:4 --out DIR
    python -m engine compress lowrank --rank-fraction 0.5 | --energy 0.9 [--projections w13,w2]
        [--activation-aware] --out DIR
    python -m engine compress distill --from DIR | rtn | gptq [--group 128] [--act-order] --minutes 3 --out DIR

Each loads the fp32 reference, compresses every block linear, writes DIR (weights, manifest, recipe)
and prints what it made; `--evaluate` then loads DIR back as `--weights DIR` would and scores it
against fp32 on the evaluation text. `distill` starts from an int4 model, a weights directory or one
it makes first with the named method (the same --group / --act-order flags), and trains its grid
toward fp32 for the minutes given. The flags' help comes from the settings models (recipe.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from engine.compress.recipe import (
    PROJECTIONS,
    DenseFormat,
    DistillSettings,
    GptqSettings,
    LowRankSettings,
    PruneSettings,
    RtnSettings,
)
from engine.quant.functions import INT4_GROUP_SIZES

SETTINGS: dict[str, type[BaseModel]] = {
    "gptq": GptqSettings,
    "rtn": RtnSettings,
    "prune": PruneSettings,
    "lowrank": LowRankSettings,
    "distill": DistillSettings,
}
INT4_SOURCES: dict[str, type[BaseModel]] = {"rtn": RtnSettings, "gptq": GptqSettings}
"""What `distill --from` may name instead of a directory: the int4 methods, run first."""
SOURCE_FLAGS = ("group_size", "act_order")
"""The settings `distill --from METHOD` takes from the flags; the method's others keep their defaults."""


def _help(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    text = field.description or name
    default = field.default
    if field.is_required() or default is None or isinstance(default, bool):
        return text
    return f"{text} (default: {','.join(default) if isinstance(default, tuple) else default})"


def _projections(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts or any(p not in PROJECTIONS for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated projections from {', '.join(PROJECTIONS)}")
    return parts


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory to write the weights to")
    p.add_argument("--model", metavar="PATH.gguf", default=None, help="GGUF file (default: the bundled SmolLM2)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--no-weight-cache", action="store_true", help="convert from the GGUF, skip the disk cache")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--evaluate", action="store_true", help="load DIR back and score it against fp32 on engine/data/eval.txt"
    )


def _group_flag(parser: argparse.ArgumentParser, settings: type[BaseModel]) -> None:
    """`--group`: the int4 group size, for GPTQ and for the round-to-nearest baseline alike."""
    parser.add_argument(
        "--group",
        dest="group_size",
        type=int,
        choices=INT4_GROUP_SIZES,
        default=None,
        help=_help(settings, "group_size"),
    )


def _act_order_flag(parser: argparse.ArgumentParser) -> None:
    """`--act-order`: GPTQ's column order, for `gptq` and for `distill --from gptq`."""
    parser.add_argument("--act-order", action="store_true", default=None, help=_help(GptqSettings, "act_order"))


def _calibration_flag(parser: argparse.ArgumentParser, settings: type[BaseModel]) -> None:
    """`--calibration-tokens`: how much of the calibration text a fitted method reads."""
    parser.add_argument(
        "--calibration-tokens", type=int, default=None, metavar="N", help=_help(settings, "calibration_tokens")
    )


def add_compress_parser(sub: Any) -> None:  # noqa: ANN401 - argparse's subparsers action has no public type
    """The `compress` command and one sub-command per method."""
    compress = sub.add_parser(
        "compress", help="write a GPTQ, pruned, low-rank or distilled model as a weights directory"
    )
    methods = compress.add_subparsers(dest="method", required=True)

    gptq = methods.add_parser("gptq", help="GPTQ int4, fitted to the calibration text (engine/data/calibration.txt)")
    _group_flag(gptq, GptqSettings)
    _act_order_flag(gptq)
    gptq.add_argument(
        "--damp", dest="damp_fraction", type=float, default=None, help=_help(GptqSettings, "damp_fraction")
    )
    _calibration_flag(gptq, GptqSettings)
    _common(gptq)

    rtn = methods.add_parser("rtn", help="round-to-nearest int4 (the baseline GPTQ is measured against)")
    _group_flag(rtn, RtnSettings)
    _common(rtn)

    prune = methods.add_parser("prune", help="magnitude pruning: unstructured at a sparsity, or 2:4")
    kind = prune.add_mutually_exclusive_group(required=True)
    kind.add_argument("--sparsity", type=float, default=None, help=_help(PruneSettings, "sparsity"))
    kind.add_argument("--pattern", choices=("2:4",), default=None, help=_help(PruneSettings, "pattern"))
    prune.add_argument("--format", choices=get_args(DenseFormat), default=None, help=_help(PruneSettings, "format"))
    _common(prune)

    lowrank = methods.add_parser("lowrank", help="SVD low-rank factors of chosen projections")
    target = lowrank.add_mutually_exclusive_group(required=True)
    target.add_argument("--rank-fraction", type=float, default=None, help=_help(LowRankSettings, "rank_fraction"))
    target.add_argument("--energy", type=float, default=None, help=_help(LowRankSettings, "energy"))
    lowrank.add_argument(
        "--projections", type=_projections, default=None, metavar="P,P,...", help=_help(LowRankSettings, "projections")
    )
    lowrank.add_argument("--format", choices=get_args(DenseFormat), default=None, help=_help(LowRankSettings, "format"))
    lowrank.add_argument(
        "--activation-aware", action="store_true", default=None, help=_help(LowRankSettings, "activation_aware")
    )
    _calibration_flag(lowrank, LowRankSettings)
    _common(lowrank)

    distill = methods.add_parser(
        "distill", help="logit distillation of an int4 model toward fp32 (its group scales and zeros), in minutes"
    )
    distill.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="DIR|" + "|".join(INT4_SOURCES),
        help="an int4 weights directory, or the int4 method to compress with first (with --group, --act-order)",
    )
    _group_flag(distill, GptqSettings)
    _act_order_flag(distill)
    distill.add_argument("--minutes", type=float, required=True, help=_help(DistillSettings, "minutes"))
    distill.add_argument(
        "--lr", dest="learning_rate", type=float, default=None, help=_help(DistillSettings, "learning_rate")
    )
    distill.add_argument("--window", type=int, default=None, metavar="N", help=_help(DistillSettings, "window"))
    distill.add_argument("--max-steps", type=int, default=None, metavar="N", help=_help(DistillSettings, "max_steps"))
    distill.add_argument(
        "--freeze-norms", dest="train_norms", action="store_false", default=None, help="train the int4 grid only"
    )
    _calibration_flag(distill, DistillSettings)
    _common(distill)


def settings_from_args(args: argparse.Namespace) -> BaseModel:
    """The method's settings from the flags given (unset flags keep the model's defaults); ValueError if invalid."""
    return _settings(SETTINGS[args.method], args)


def source_from_args(args: argparse.Namespace) -> Path | BaseModel:
    """What `distill` starts from: a weights directory, or the settings of the int4 method to run first."""
    if args.source in INT4_SOURCES:
        model = INT4_SOURCES[args.source]
        if args.act_order and "act_order" not in model.model_fields:
            raise ValueError(f"--act-order is a GPTQ setting, not one of --from {args.source}")
        return _settings(model, args, SOURCE_FLAGS)
    if args.group_size is not None or args.act_order:
        raise ValueError(
            f"--group and --act-order choose the settings of --from {'|'.join(INT4_SOURCES)}; "
            f"the directory {args.source} keeps its own"
        )
    return Path(args.source)


def _settings(model: type[BaseModel], args: argparse.Namespace, only: tuple[str, ...] | None = None) -> BaseModel:
    names = [name for name in model.model_fields if only is None or name in only]
    values = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    values.pop("method", None)
    try:
        return model(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise ValueError(problems) from None


def run_compress(args: argparse.Namespace) -> int:
    import torch

    from engine.compress.distill import distill
    from engine.compress.evaluate import quality_against, reference_scores
    from engine.compress.pipeline import compress, load_compressed, load_reference
    from engine.run.runtime import Engine, LoadOptions

    settings = settings_from_args(args)
    source = source_from_args(args) if isinstance(settings, DistillSettings) else None
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    say = lambda message: print(message, file=sys.stderr)  # noqa: E731
    use_cache = not args.no_weight_cache
    start = load_compressed(source, args.model, args.device) if isinstance(source, Path) else None  # fails first
    reference = load_reference(args.model, args.device, use_cache)
    if isinstance(settings, DistillSettings):
        if start is None:
            start = compress(source, reference, progress=say, use_cache=use_cache)  # type: ignore[arg-type]
        compressed = distill(settings, reference, start, progress=say)
    else:
        compressed = compress(settings, reference, progress=say, use_cache=use_cache)  # type: ignore[arg-type]
    compressed.save(args.out)
    recipe = compressed.recipe
    print(f"{recipe.summary()}: {len(recipe.layers)} block linears in {recipe.compress_s:.1f} s")
    print(
        f"weights {compressed.loaded.weight_bytes / 2**20:.1f} MiB "
        f"(fp32 reference {reference.weight_bytes / 2**20:.1f} MiB), written to {args.out}"
    )
    if recipe.calibration is not None:
        print(
            f"calibration: {recipe.calibration.tokens} tokens of {recipe.calibration.file} "
            "(separate from the evaluation text)"
        )
    if (d := recipe.distillation) is not None:
        print(
            f"distillation: {d.steps} steps ({d.tokens_seen} tokens) in {d.train_s:.1f} s of a {d.budget_s:.0f} s "
            f"budget (stopped by {d.stopped_by}; fp32 pass {d.teacher_s:.1f} s); training KL {d.loss_first:.4f} "
            f"at the first step, {d.loss_last:.4f} at the last"
        )
    if not args.evaluate:
        return 0
    del compressed
    say("evaluate: fp32 reference over the evaluation text")
    ref_engine = Engine(reference)
    scores = reference_scores(ref_engine)
    ref_quality = quality_against(ref_engine, scores)
    del ref_engine, reference
    say(f"evaluate: loading {args.out} back")
    engine = Engine.load(LoadOptions(None, args.model, args.device, weights_dir=str(args.out)))
    q = quality_against(engine, scores)
    print(
        f"quality vs fp32 over {len(scores.ids)} tokens of engine/data/eval.txt: perplexity {q['perplexity']:.3f} "
        f"(fp32 {ref_quality['perplexity']:.3f}), mean KL {q['mean_kl_nats']:.4f} nats, "
        f"top-1 agreement {q['top1_agreement']:.3f}; loaded {engine.info.weight_bytes / 2**20:.1f} MiB "
        f"as {engine.info.weights_label}"
    )
    return 0
