"""`python -m engine compress METHOD ... --out DIR`: write a compressed model as a weights directory.

    python -m engine compress gptq --group 128 [--act-order] --out DIR
    python -m engine compress rtn --group 128 --out DIR
    python -m engine compress prune --sparsity 0.5 | --pattern 2:4 --out DIR
    python -m engine compress lowrank --rank-fraction 0.5 | --energy 0.9 [--projections w13,w2] --out DIR

Each loads the fp32 reference, compresses every block linear, writes DIR (weights, manifest, recipe)
and prints what it made; `--evaluate` then loads DIR back as `--weights DIR` would and scores it
against fp32 on the evaluation text. The flags' help comes from the settings models (recipe.py).
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
}


def _help(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    text = field.description or name
    default = field.default
    if default is None or isinstance(default, bool):
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


def add_compress_parser(sub: Any) -> None:  # noqa: ANN401 - argparse's subparsers action has no public type
    """The `compress` command and one sub-command per method."""
    compress = sub.add_parser("compress", help="write a GPTQ, pruned or low-rank model as a weights directory")
    methods = compress.add_subparsers(dest="method", required=True)

    gptq = methods.add_parser("gptq", help="GPTQ int4, fitted to the calibration text (engine/data/calibration.txt)")
    _group_flag(gptq, GptqSettings)
    gptq.add_argument("--act-order", action="store_true", help=_help(GptqSettings, "act_order"))
    gptq.add_argument(
        "--damp", dest="damp_fraction", type=float, default=None, help=_help(GptqSettings, "damp_fraction")
    )
    gptq.add_argument(
        "--calibration-tokens", type=int, default=None, metavar="N", help=_help(GptqSettings, "calibration_tokens")
    )
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
    _common(lowrank)


def settings_from_args(args: argparse.Namespace) -> BaseModel:
    """The method's settings from the flags given (unset flags keep the model's defaults); ValueError if invalid."""
    model = SETTINGS[args.method]
    values = {name: getattr(args, name) for name in model.model_fields if getattr(args, name, None) is not None}
    values.pop("method", None)
    try:
        return model(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise ValueError(problems) from None


def run_compress(args: argparse.Namespace) -> int:
    import torch

    from engine.compress.evaluate import quality_against, reference_scores
    from engine.compress.pipeline import compress, load_reference
    from engine.run.runtime import Engine, LoadOptions

    settings = settings_from_args(args)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    say = lambda message: print(message, file=sys.stderr)  # noqa: E731
    reference = load_reference(args.model, args.device, not args.no_weight_cache)
    compressed = compress(settings, reference, progress=say, use_cache=not args.no_weight_cache)  # type: ignore[arg-type]
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
