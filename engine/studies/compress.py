"""The compression study: every weight format and compression setting, measured as the engine serves it.

For each setting (a served weight format, or a named compression chain of engine/compress/catalog.py)
the study loads the model the engine would serve and measures, on this machine:

- weight bytes resident after the load, and for a compressed model the bytes its weights directory holds;
- the load time: a format from the converted-weights cache (as the quant study's warm load), a
  compressed model from the weights directory the study wrote for it, loaded exactly as `--weights DIR`
  loads it (hashes verified);
- prefill and decode tok/s of one greedy run, as the quant study measures them;
- quality against the fp32 reference on engine/data/eval.txt, by engine/compress/evaluate.py (perplexity,
  mean KL(fp32 || setting), top-1 agreement).

Every row is then compared with the fp32 row. A setting whose weights are not smaller, or which runs no
faster beyond the speed tolerance, says so and why, from what was measured and loaded: the zeros a
pruned model stores, the values its low-rank factors hold against the dense layers', the modules its
block linears run as. Two Pareto frontiers mark the settings no other beats on both quality (mean KL)
and size, or on both quality and decode speed.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

from engine.compress.calibration import CALIBRATION_FILE
from engine.compress.catalog import CATALOG, describe_chain, produce
from engine.compress.evaluate import ReferenceScores, quality_against, reference_scores
from engine.formats import WEIGHT_FORMATS
from engine.quant.linear import QuantLinear
from engine.run.runtime import Engine, LoadOptions
from engine.studies.base import (
    Progress,
    StudyOptions,
    StudyResult,
    eval_ids,
    free_memory,
    machine_conditions,
    options_dict,
    rate_text,
    report,
    study_run,
)
from engine.studies.pareto import pareto_front
from engine.studies.quant import REFERENCE, eval_windows, measure_speed, warm_engine

# A speed within this fraction of fp32's is no saving: one greedy run's tok/s moves by about this much from
# run to run on a shared 2-core machine. Weights at BYTES_KEPT of fp32's or more save no bytes.
SPEED_TOLERANCE = 0.15
BYTES_KEPT = 0.99


def _block_linear_kinds(engine: Engine) -> str:
    """What the block linears run as, with counts: 'DenseLinear x120' (the tied head is not a block linear)."""
    kinds = Counter(
        type(m).__name__
        for name, m in engine.loaded.model.named_modules()
        if isinstance(m, QuantLinear) and name.startswith("layers.")
    )
    return ", ".join(f"{kind} x{count}" for kind, count in kinds.most_common())


def recipe_figures(recipe: dict[str, object] | None) -> dict[str, float | None]:
    """From a loaded directory's recipe: the share of block-linear weights that are zero, and the values the
    low-rank factors hold against the dense layers they replace (r (N + K) / N K), where the method made them."""
    layers: list[dict[str, object]] = list((recipe or {}).get("layers", []))  # type: ignore[call-overload]
    dense = sum(int(r["out_features"]) * int(r["in_features"]) for r in layers)  # type: ignore[call-overload]
    sparse = [r for r in layers if r.get("sparsity") is not None]
    ranked = [r for r in layers if r.get("rank") is not None]
    figures: dict[str, float | None] = {"sparsity": None, "factor_values_ratio": None, "energy_kept": None}
    if sparse and dense:
        zeros = sum(float(r["sparsity"]) * int(r["out_features"]) * int(r["in_features"]) for r in sparse)  # type: ignore[arg-type, call-overload]
        figures["sparsity"] = zeros / dense
    if ranked and dense:
        factors = sum(int(r["rank"]) * (int(r["out_features"]) + int(r["in_features"])) for r in ranked)  # type: ignore[call-overload]
        figures["factor_values_ratio"] = factors / dense
        figures["energy_kept"] = sum(float(r["energy_kept"]) for r in ranked) / len(ranked)  # type: ignore[arg-type]
    return figures


def _load_directory(directory: Path, options: StudyOptions) -> tuple[Engine, float]:
    t0 = time.perf_counter()
    engine = Engine.load(LoadOptions(None, options.model_path, options.device, weights_dir=str(directory)))
    return engine, time.perf_counter() - t0


def _measure(engine: Engine, options: StudyOptions, prompt: list[int], scores: ReferenceScores) -> dict[str, object]:
    prefill_tok_s, decode_tok_s = measure_speed(engine, prompt, options.quant_decode_tokens)
    return (
        {
            "format": engine.info.quant,
            "weight_bytes": engine.info.weight_bytes,
            "prefill_tok_s": prefill_tok_s,
            "decode_tok_s": decode_tok_s,
        }
        | quality_against(engine, scores)
        | {"block_linears": _block_linear_kinds(engine)}
    )


def _measure_setting(
    name: str,
    options: StudyOptions,
    reference: Engine,
    reference_load_s: float | None,
    prompt: list[int],
    scores: ReferenceScores,
    progress: Progress | None,
) -> dict[str, object]:
    """One row: the setting loaded as the engine serves it, its speed and its quality against fp32.

    The fp32 row measures the reference itself (loaded once, from the cache as every format is)."""
    device = reference.loaded.device
    if name in WEIGHT_FORMATS:
        if name == REFERENCE:
            engine, load_s = reference, reference_load_s
        else:
            report(progress, f"compress: {name}: warm load of the served format")
            engine, load_s = warm_engine(options, name)
        report(progress, f"compress: {name}: speed, then quality over {len(scores.ids)} tokens")
        row = {"setting": name, "method": "served weight format", "load_s": load_s, "compress_s": None}
        row |= {"stored_bytes": None} | _measure(engine, options, prompt, scores) | recipe_figures(None)
        del engine
        free_memory(device)
        return row
    chain = CATALOG[name]
    compressed, seconds = produce(chain, reference.loaded, progress)
    with tempfile.TemporaryDirectory(prefix=f"preflight-study-{name.replace(':', '_')}-") as tmp:
        directory = Path(tmp)
        report(progress, f"compress: {name}: writing the weights directory, then loading it as --weights DIR")
        compressed.save(directory)
        del compressed
        free_memory(device)
        stored = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
        engine, load_s = _load_directory(directory, options)
        report(progress, f"compress: {name}: speed, then quality over {len(scores.ids)} tokens")
        row = {"setting": name, "method": describe_chain(chain), "load_s": load_s, "compress_s": seconds}
        row |= {"stored_bytes": stored} | _measure(engine, options, prompt, scores)
        row |= recipe_figures(engine.info.recipe)
        del engine
        free_memory(device)
    return row


def _ratio(value: object, base: object) -> float | None:
    if not isinstance(value, int | float) or not isinstance(base, int | float) or not base:
        return None
    return float(value) / float(base)


def why_no_saving(row: dict[str, object]) -> str:
    """Why a setting that saves nothing here saves nothing, from its measured and loaded figures."""
    sparsity, factors = row.get("sparsity"), row.get("factor_values_ratio")
    linears = row.get("block_linears")
    if isinstance(sparsity, float):
        return (
            f"its {sparsity:.0%} zeros are stored and multiplied like any other weight: the block linears are "
            f"dense {row['format']} matrices ({linears}) and the engine has no sparse kernel on this device"
        )
    if isinstance(factors, float):
        return (
            f"the low-rank factors hold {factors:.2f}x the values of the dense layers they replace "
            f"(r (N + K) against N K) and run as two matmuls each ({linears})"
        )
    return f"its block linears ({linears}) run no faster than fp32's on this device"


def compare_with_reference(rows: list[dict[str, object]], tolerance: float = SPEED_TOLERANCE) -> None:
    """Add to every row its size and speeds against fp32, and what it saves nothing on, and why.

    Bytes are compared with the first (fp32) row. Speeds with the fp32 speeds measured beside the row
    (`fp32_prefill_tok_s`, `fp32_decode_tok_s`) where the row has them: the other work on a shared machine
    changes over a study, and a setting timed minutes after the fp32 row would gain or lose by that alone.
    """
    base = rows[0]
    for row in rows:
        bytes_x = _ratio(row["weight_bytes"], base["weight_bytes"])
        decode_x = _ratio(row["decode_tok_s"], row.get("fp32_decode_tok_s", base["decode_tok_s"]))
        prefill_x = _ratio(row["prefill_tok_s"], row.get("fp32_prefill_tok_s", base["prefill_tok_s"]))
        row |= {"bytes_vs_fp32": bytes_x, "decode_vs_fp32": decode_x, "prefill_vs_fp32": prefill_x}
        lacks = []
        if row is not base and bytes_x is not None and bytes_x >= BYTES_KEPT:
            lacks.append("bytes")
        speeds = [x for x in (decode_x, prefill_x) if x is not None]
        if row is not base and speeds and max(speeds) < 1 + tolerance:
            lacks.append("time")
        row["saves_nothing_on"] = ", ".join(lacks)
        if not lacks:
            row["why_no_saving"] = None
            continue
        figures = []
        if "bytes" in lacks:
            figures.append(f"weights {bytes_x:.2f}x fp32's")
        if "time" in lacks:
            figures.append(f"decode {rate_text(decode_x, 2)}x and prefill {rate_text(prefill_x, 2)}x fp32's")
        row["why_no_saving"] = f"saves no {' and no '.join(lacks)} here ({'; '.join(figures)}): {why_no_saving(row)}"


def mark_frontiers(rows: list[dict[str, object]]) -> None:
    """Mark the rows on the quality-vs-size frontier (fewer bytes, less KL) and quality-vs-speed (faster, less KL)."""
    kl = [row["mean_kl_nats"] for row in rows]
    by_size = pareto_front(list(zip([r["weight_bytes"] for r in rows], kl, strict=True)), lower_x=True, lower_y=True)  # type: ignore[arg-type]
    by_speed = pareto_front(list(zip([r["decode_tok_s"] for r in rows], kl, strict=True)), lower_x=False, lower_y=True)  # type: ignore[arg-type]
    for row, size, speed in zip(rows, by_size, by_speed, strict=True):
        row |= {"pareto_size": size, "pareto_speed": speed}


@study_run
def run_compress_study(options: StudyOptions, progress: Progress | None = None) -> StudyResult:
    settings = (REFERENCE, *[s for s in options.compress_settings if s != REFERENCE])
    report(progress, "compress: loading the fp32 reference (what every method starts from and is scored against)")
    reference, reference_load_s = warm_engine(options, REFERENCE)
    prompt = eval_ids(reference.loaded.tokenizer, options.quant_prompt_tokens)[: options.quant_prompt_tokens]
    report(progress, "compress: fp32 log-probabilities over the evaluation text")
    scores = reference_scores(reference, options.eval_max_tokens, options.eval_window)
    conditions = machine_conditions(reference, "compress") | options_dict(
        options, "compress_settings", "quant_prompt_tokens", "quant_decode_tokens", "eval_window"
    )
    del conditions["format"]  # one row per setting instead
    conditions |= {
        "reference": REFERENCE,
        "eval_tokens": len(scores.ids),
        "calibration": CALIBRATION_FILE,
        "speed_tolerance": SPEED_TOLERANCE,
    }
    rows = []
    for name in settings:
        row = _measure_setting(name, options, reference, reference_load_s, prompt, scores, progress)
        if name != REFERENCE:
            report(progress, f"compress: fp32 speed again, beside {name} (for the speed ratios)")
            fp32_prefill, fp32_decode = measure_speed(reference, prompt, options.quant_decode_tokens)
            row |= {"fp32_prefill_tok_s": fp32_prefill, "fp32_decode_tok_s": fp32_decode}
        rows.append(row)
        report(
            progress,
            f"compress: {name}: {int(row['weight_bytes']) / 2**20:.1f} MiB, decode "  # type: ignore[call-overload]
            f"{rate_text(row['decode_tok_s'])} tok/s, perplexity {row['perplexity']:.3f}, "  # type: ignore[arg-type]
            f"KL {row['mean_kl_nats']:.4f}, top-1 {row['top1_agreement']:.3f}",
        )
    device = reference.loaded.device
    del reference
    free_memory(device)
    compare_with_reference(rows)
    mark_frontiers(rows)
    return StudyResult("compress", conditions, rows, _notes(options, rows, scores))


def _notes(options: StudyOptions, rows: list[dict[str, object]], scores: ReferenceScores) -> list[str]:
    n_windows = len(eval_windows(len(scores.ids), scores.window))
    notes = [
        f"Reference: {REFERENCE} (the GGUF's weights dequantized). Quality over {len(scores.ids)} tokens of "
        f"engine/data/eval.txt in {n_windows} window(s) of up to {scores.window} tokens, scored as the quant study "
        "scores (engine/compress/evaluate.py): perplexity, mean KL(fp32 || setting) in nats, top-1 agreement.",
        f"GPTQ is fitted to {CALIBRATION_FILE}, a text kept apart from the evaluation text: no quality figure is "
        "scored on the data a method was fitted to.",
        "Weights: bytes resident after the load (the tied embedding / head included); stored: the bytes of the "
        "weights directory the study wrote and loaded back as --weights DIR. Load: a format from the "
        "converted-weights cache, a compressed model from its directory (both verify their hashes).",
        f"Speed: prompt of the first {options.quant_prompt_tokens} eval tokens, {options.quant_decode_tokens} tokens "
        "decoded greedily (ignore_eos) after a short warm-up. Each setting's speed ratios are against fp32 timed "
        "again right after it (fp32_*_tok_s), so a change in the machine's load over the study does not count as "
        f"a saving; one run each, so a ratio within {SPEED_TOLERANCE:.0%} of 1 counts as no saving.",
        "Pareto frontiers (mean KL against fp32, lower is better): 'size' marks the settings no other beats on "
        "both KL and weight bytes, 'speed' those no other beats on both KL and decode tok/s.",
    ]
    notes += [f"{row['setting']}: {row['why_no_saving']}." for row in rows if row.get("why_no_saving")]
    return notes
