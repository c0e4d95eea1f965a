"""Compression methods on the bundled model: weight bytes and quality against fp32, one process, one reference.

    .venv/bin/python bench/compress_quality.py [--configs rtn-g128,gptq-g128,...] [--threads N]
        [--damp 0.01] [--distill-minutes 3] [--eval-tokens 1536] [--json OUT]

Each configuration compresses the fp32 reference (the GGUF's weights dequantized) with
`engine.compress.pipeline.compress`, serves the result in memory exactly as `--weights DIR` would
load it, and scores it on engine/data/eval.txt as the quant study does (perplexity, mean
KL(fp32 || method), top-1 agreement; windows of 512 tokens). GPTQ is fitted to
engine/data/calibration.txt, a separate text. A `+distill` configuration compresses as its base does,
then trains that model's int4 grid toward fp32 on the calibration text for --distill-minutes
(engine/compress/distill.py); its compress seconds are both parts together. Two anchor rows: fp32
itself and the served `int4` format (the file's own Q4_1 codes). Speed is not measured here: the
later `study compress` does that.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import conditions, fmt_num, format_table  # noqa: E402


def _configs(damp: float, distill_minutes: float) -> dict[str, object]:
    """The named settings of engine/compress/catalog.py (the compression study's list), GPTQ at `damp` and
    each distillation within `distill_minutes`."""
    from engine.compress.catalog import CATALOG
    from engine.compress.recipe import DistillSettings, GptqSettings

    def tuned(s: object) -> object:
        if isinstance(s, GptqSettings):
            return s.model_copy(update={"damp_fraction": damp})
        if isinstance(s, DistillSettings):
            return s.model_copy(update={"minutes": distill_minutes})
        return s

    return {name: tuple(tuned(s) for s in chain) for name, chain in CATALOG.items()}


def _layer_note(recipe: object) -> str:
    """What the layers came out as: sparsity, rank, or GPTQ's calibration error against round-to-nearest's; for a
    distilled model what the training did (steps, tokens, training KL at the first and last step)."""
    d = recipe.distillation  # type: ignore[attr-defined]
    if d is not None:
        return f"{d.steps} steps, {d.tokens_seen} tok, train KL {d.loss_first:.3f}->{d.loss_last:.3f}"
    layers = recipe.layers  # type: ignore[attr-defined]
    mean = lambda key: sum(getattr(r, key) for r in layers) / len(layers)  # noqa: E731
    if layers[0].sparsity is not None:
        return f"sparsity {mean('sparsity'):.3f}"
    if layers[0].rank is not None:
        return f"energy kept {mean('energy_kept'):.3f}"
    if layers[0].calib_output_rel_err is not None:
        return f"calib err {mean('calib_output_rel_err'):.4f} (rtn {mean('rtn_calib_output_rel_err'):.4f})"
    return f"weight err {mean('weight_rel_fro'):.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening for the gptq-* configs")
    parser.add_argument("--distill-minutes", type=float, default=3.0, help="training budget of the +distill configs")
    parser.add_argument("--eval-tokens", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from engine.compress.catalog import produce
    from engine.compress.evaluate import EVAL_TOKENS, quality_against, reference_scores
    from engine.compress.pipeline import load_reference
    from engine.model.loader import load_model
    from engine.run.runtime import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    configs = _configs(args.damp, args.distill_minutes)
    names = args.configs.split(",") if args.configs else list(configs)
    unknown = [n for n in names if n not in configs]
    if unknown:
        parser.error(f"unknown configs {unknown}: choose from {', '.join(configs)}")
    cond = conditions() | {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    reference = load_reference(device="cpu")
    scores = reference_scores(Engine(reference), args.eval_tokens or EVAL_TOKENS)
    rows = [{"config": "fp32 (reference)", "weight_bytes": reference.weight_bytes, "compress_s": None}]
    rows[0] |= quality_against(Engine(reference), scores) | {"layers": "-"}
    int4 = Engine(load_model(None, "int4", "cpu"))
    rows.append({"config": "int4 (file's Q4_1)", "weight_bytes": int4.info.weight_bytes, "compress_s": None})
    rows[-1] |= quality_against(int4, scores) | {"layers": "-"}
    del int4
    for name in names:
        print(f"{name}: compressing", file=sys.stderr)
        t0 = time.perf_counter()
        compressed, seconds = produce(configs[name], reference)  # type: ignore[arg-type]
        engine = Engine(compressed.loaded)
        row = {"config": name, "weight_bytes": engine.info.weight_bytes, "compress_s": seconds}
        rows.append(row | quality_against(engine, scores) | {"layers": _layer_note(compressed.recipe)})
        print(f"{name}: {rows[-1]} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        del compressed, engine
    cond["load_avg_1m_5m_end"] = conditions()["load_avg_1m_5m"]
    cond |= {"eval_tokens": len(scores.ids), "eval_window": scores.window, "calibration": "engine/data/calibration.txt"}
    print("\n".join(f"{k}: {v}" for k, v in cond.items()))
    header = ["config", "weights MiB", "compress s", "perplexity", "mean KL", "top-1", "layers"]
    table = [
        [
            r["config"],
            fmt_num(r["weight_bytes"] / 2**20),
            fmt_num(r["compress_s"]),
            fmt_num(r["perplexity"], 3),
            fmt_num(r["mean_kl_nats"], 4),
            fmt_num(r["top1_agreement"], 3),
            r["layers"],
        ]
        for r in rows
    ]
    print(format_table(header, table))
    if args.json:
        args.json.write_text(json.dumps({"conditions": cond, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
