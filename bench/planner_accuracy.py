"""The planner's predictions held against published measurements (planner/data/published.json).

    .venv/bin/python bench/planner_accuracy.py [--summary-only]

Each published point is predicted by `planner.entrypoints.predict_one`, the function behind
`python -m planner predict`, with the point's own conditions: model, GPU and count, TP/PP, engine and
its version (vLLM's selects its memory rule; a point without one is planned with the catalog's default
release), format, KV-cache dtype, gpu_memory_utilization, max_model_len, batch limits, chunked prefill (where the
source's engine version fixes it), input/output lengths and load. Nothing is fitted here: the catalog's
constants are used as they are, uncalibrated (TensorRT-LLM's GPU figures in engines.json were fitted on
the fit half only, by bench/planner_fit_published.py; the held-out half is the honest figure). No GPU is
needed: it runs in well under a second.

Where a point's conditions do not map one-to-one onto `predict`'s options, the mapping is stated:
- NVIDIA NIM serves these models with TensorRT-LLM, so a `nim` point is predicted as `tensorrt-llm`;
- Llama-2-7b/70b and Qwen2.5-0.5B-Instruct are not in the catalog: they are predicted from the
  architecture figures of their Hugging Face config.json, kept in bench/data/*.config.json;
- a weights-only point whose source names no GPU is predicted on a stand-in GPU (weights per rank do
  not depend on the card);
- a point measured at saturation (no stated concurrency) is compared on `max_output_tok_s`, which
  `predict` computes for any load;
- TensorRT-LLM's saturated points were measured with trtllm-bench, which sizes max_batch_size and
  max_num_tokens from the KV memory and the sequence lengths by its own rule (tensorrt_llm/bench/build/
  tuning.py: requests = 0.95 x (GPU memory - engine size) / (KV bytes per token x (ISL + OSL)), rounded
  up as it rounds them) and runs with kv_cache_free_gpu_mem_fraction 0.95: the script applies that rule.

The per-point table gives the signed error (predicted - published) / published. The summary gives the
median absolute error per metric for the fit half and the held-out half (every third point, see
planner/published.py), with the issue's targets beside them. KV capacity takes one figure per point:
KV tokens (the log's token count, or # GPU blocks x block size), else the KV cache GiB, else vLLM's
"Maximum concurrency". `started` is compared with `fits` as agreement, not as a percentage.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import format_table, source_revision  # noqa: E402
from planner.catalog import Catalog, load_catalog  # noqa: E402
from planner.entrypoints import predict_one  # noqa: E402
from planner.errors import PlannerError  # noqa: E402
from planner.predict_io import PredictOptions, PredictResult  # noqa: E402
from planner.published import PublishedPoint, load_published  # noqa: E402
from planner.recommend import resolve_model  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
# Models a published point names that the catalog lacks: the HF config.json figures they are sized from.
MODEL_FILES = {
    "meta-llama/Llama-2-7b-hf": DATA / "llama-2-7b-hf.config.json",
    "meta-llama/Llama-2-70b-hf": DATA / "llama-2-70b-hf.config.json",
    "Qwen/Qwen2.5-0.5B-Instruct": DATA / "qwen2.5-0.5b-instruct.config.json",
}
ENGINE_MAP = {"nim": "tensorrt-llm"}  # NIM's LLM containers run TensorRT-LLM
TRTLLM_BENCH_KV_FRACTION = 0.95  # trtllm-bench's kv_cache_free_gpu_mem_fraction default
WEIGHTS_ONLY_GPU = "h100-sxm"  # stand-in when the source names no GPU; weights per rank do not depend on it

# The uncalibrated targets: median absolute error, percent.
TARGETS = {"weights_gib": 2.0, "kv_capacity": 5.0, "tpot_ms": 12.0, "ttft_ms": 20.0, "throughput": 12.0}
# Summary rows: (row name, the per-point metrics it pools, the target key).
SUMMARY = (
    ("weights_gib", ("weights_gib",), "weights_gib"),
    ("kv_capacity (one per point)", ("kv_capacity",), "kv_capacity"),
    ("  kv_tokens (tokens or blocks x size)", ("kv_tokens",), "kv_capacity"),
    ("  kv_cache_gib", ("kv_cache_gib",), "kv_capacity"),
    ("  max_concurrency", ("max_concurrency",), "kv_capacity"),
    ("ttft_ms", ("ttft_ms",), "ttft_ms"),
    ("tpot_ms", ("tpot_ms",), "tpot_ms"),
    ("e2e_ms", ("e2e_ms",), None),
    ("throughput (both below)", ("output_tok_s", "max_output_tok_s"), "throughput"),
    ("  output_tok_s (at the load)", ("output_tok_s",), "throughput"),
    ("  max_output_tok_s (saturated)", ("max_output_tok_s",), "throughput"),
)


@dataclass(frozen=True, slots=True)
class Row:
    """One metric of one point: what the source printed, what the planner predicts, and the signed error.

    `predicted` is None when the planner gives no figure (the configuration does not fit, or it raised:
    `problem` says which). For `started`, published/predicted are 1.0/0.0 and error is None.
    """

    point: str
    split: str
    metric: str
    published: float
    predicted: float | None
    error_pct: float | None
    problem: str | None = None


def options_for(point: PublishedPoint) -> tuple[PredictOptions, list[str]]:
    """`predict`'s options for a point's exact conditions, and notes on each mapping that is not one-to-one."""
    c, notes = point.conditions, []
    model = c.model
    if c.model in MODEL_FILES:
        model = str(MODEL_FILES[c.model])
        notes.append(f"model from {MODEL_FILES[c.model].relative_to(DATA.parent.parent)}")
    engine = ENGINE_MAP.get(c.engine, c.engine)
    if engine != c.engine:
        notes.append(f"{c.engine} predicted as {engine}")
    gpu = c.gpu
    if gpu is None:
        gpu = WEIGHTS_ONLY_GPU
        notes.append(f"no GPU stated: weights predicted on {gpu}")
    bench_limits: dict[str, float | int] = {}
    if engine == "tensorrt-llm" and c.load == "saturated" and c.input_tokens and c.output_tokens:
        seqs, tokens = trtllm_bench_limits(
            c.model, c.gpu or WEIGHTS_ONLY_GPU, c.format, c.tp, c.pp, c.input_tokens, c.output_tokens
        )
        bench_limits = {
            "max_num_seqs": c.max_num_seqs or seqs,
            "max_num_batched_tokens": c.max_num_batched_tokens or tokens,
            "gpu_memory_utilization": c.gpu_memory_utilization or TRTLLM_BENCH_KV_FRACTION,
        }
        notes.append(
            f"trtllm-bench limits: max_batch_size {seqs}, max_num_tokens {tokens}, KV fraction "
            f"{TRTLLM_BENCH_KV_FRACTION}"
        )
    lengths = {}
    if c.input_tokens is not None:
        lengths["input_tokens"] = c.input_tokens
    if c.output_tokens is not None:
        lengths["output_tokens"] = c.output_tokens
    opts = PredictOptions(
        model=model,
        gpu=gpu,
        gpus=c.gpus,
        tp=c.tp,
        pp=c.pp,
        engine=engine,
        engine_version=c.engine_version,
        format=c.format,
        kv_cache_dtype=c.kv_cache_dtype,
        vllm_sampler=c.vllm_sampler,
        tp_transport=c.tp_transport,
        gpu_memory_utilization=bench_limits.get("gpu_memory_utilization", c.gpu_memory_utilization),
        max_num_seqs=bench_limits.get("max_num_seqs", c.max_num_seqs),
        max_num_batched_tokens=bench_limits.get("max_num_batched_tokens", c.max_num_batched_tokens),
        max_model_len=c.max_model_len,
        enable_chunked_prefill=c.chunked_prefill,
        concurrency=c.concurrency,
        qps=c.request_rate,
        **lengths,
    )
    return opts, notes


def _round_up_in_bands(value: float, floor: int, bands: tuple[tuple[float, int], ...]) -> int:
    """trtllm-bench's rounding: up to a multiple of the step of the first band `value` is below, at least `floor`."""
    step = next(step for limit, step in bands if value < limit)
    return max(floor, step * math.ceil(value / step))


def trtllm_bench_limits(
    model_name: str, gpu: str, fmt: str, tp: int, pp: int, input_tokens: int, output_tokens: int
) -> tuple[int, int]:
    """(max_batch_size, max_num_tokens) as trtllm-bench's tuning rule picks them for these lengths."""
    cat = load_catalog()
    model = resolve_model(model_name, cat)
    weight_bytes = 1.0 if fmt == "fp8" else 2.0
    kv_bytes = 1.0 if fmt == "fp8" else 2.0  # ModelOpt FP8 checkpoints quantize the KV cache too
    per_token_gib = 2 * model.n_layers * max(tp, model.n_kv_heads) * model.head_dim * kv_bytes / 2**30
    engine_gib = model.params_total * weight_bytes / 2**30
    available = cat.gpus[gpu].memory_bytes / 2**30 * tp * pp - engine_gib
    requests = available * TRTLLM_BENCH_KV_FRACTION / (per_token_gib * (input_tokens + output_tokens))
    raw_bs = min(requests, 4096) / pp
    raw_tokens = min(raw_bs * (1 + input_tokens / output_tokens), 32768)
    bs = _round_up_in_bands(raw_bs, 64, ((256, 32), (1024, 128), (math.inf, 256)))
    tokens = _round_up_in_bands(raw_tokens, 2048, ((4096, 256), (8192, 512), (math.inf, 1024)))
    return bs, tokens


def _published_kv_tokens(point: PublishedPoint) -> float | None:
    m = point.measured
    if m.kv_tokens is not None:
        return float(m.kv_tokens)
    if m.gpu_blocks is not None and point.conditions.block_size is not None:
        return float(m.gpu_blocks * point.conditions.block_size)
    return None


def _pairs(point: PublishedPoint, r: PredictResult | None) -> list[tuple[str, float, float | None]]:
    """(metric, published, predicted) for every figure the point measured, KV figures as comparable ones."""
    m = point.measured

    def got(name: str) -> float | None:
        return None if r is None else getattr(r, name)

    pairs: list[tuple[str, float, float | None]] = []
    if m.weights_gib is not None:
        pairs.append(("weights_gib", m.weights_gib, got("weights_gib")))
    kv_tokens = _published_kv_tokens(point)
    if kv_tokens is not None:
        pairs.append(("kv_tokens", kv_tokens, None if r is None else float(r.kv_tokens)))
    if m.kv_cache_gib is not None:
        pairs.append(("kv_cache_gib", m.kv_cache_gib, got("kv_cache_gib")))
    if m.max_concurrency is not None:
        pairs.append(("max_concurrency", m.max_concurrency, got("max_concurrency_at_max_model_len")))
    for name in ("ttft_ms", "tpot_ms", "e2e_ms", "output_tok_s", "max_output_tok_s"):
        value = getattr(m, name)
        if value is not None:
            pairs.append((name, value, got(name)))
    return pairs


def predict_point(point: PublishedPoint, catalog: Catalog) -> tuple[list[Row], list[str]]:
    """Rows for every metric the point measured, and the notes on how its conditions were mapped.

    A planner error (an unsupported combination, say) is a row per metric with `problem` set, never an
    exception: the benchmark reports every point.
    """
    problem = None
    result: PredictResult | None = None
    notes: list[str] = []
    try:
        opts, notes = options_for(point)
        result = predict_one(opts, catalog)
    except (PlannerError, ValueError) as exc:
        problem = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    if result is not None and not result.fits:
        problem = result.reason
    rows = []
    for metric, published, predicted in _pairs(point, result):
        err = None if predicted is None else 100.0 * (predicted - published) / published
        rows.append(
            Row(point.id, point.split, metric, published, predicted, err, problem if predicted is None else None)
        )
    if point.measured.started is not None:
        fits_problem = problem if result is None else None
        fits = None if result is None else float(result.fits)
        rows.append(Row(point.id, point.split, "started", float(point.measured.started), fits, None, fits_problem))
    return rows, notes


def predict_all(catalog: Catalog | None = None) -> tuple[list[Row], dict[str, list[str]]]:
    """Every published point predicted: all rows in file order, and each point's mapping notes."""
    cat = catalog or load_catalog()
    rows: list[Row] = []
    notes: dict[str, list[str]] = {}
    for point in load_published().points:
        point_rows, point_notes = predict_point(point, cat)
        rows += point_rows
        if point_notes:
            notes[point.id] = point_notes
    return rows, notes


def kv_capacity_rows(rows: list[Row]) -> list[Row]:
    """One KV-capacity row per point: its KV tokens, else its KV cache GiB, else its max concurrency."""
    best: dict[str, Row] = {}
    rank = {"kv_tokens": 0, "kv_cache_gib": 1, "max_concurrency": 2}
    for r in rows:
        if r.metric in rank and (r.point not in best or rank[r.metric] < rank[best[r.point].metric]):
            best[r.point] = r
    return list(best.values())


def median_abs(rows: list[Row]) -> tuple[float | None, int, int]:
    """Median |error| over rows with a prediction, how many had one, and how many had none."""
    errs = [abs(r.error_pct) for r in rows if r.error_pct is not None]
    return (statistics.median(errs) if errs else None), len(errs), len(rows) - len(errs)


def summary_table(rows: list[Row]) -> str:
    """Median |error| per metric for each half and for all points, beside the issue's target."""
    pooled = rows + [
        Row(r.point, r.split, "kv_capacity", r.published, r.predicted, r.error_pct, r.problem)
        for r in kv_capacity_rows(rows)
    ]
    out = []
    for label, metrics, target_key in SUMMARY:
        cells = [label]
        all_errs: list[Row] = []
        for split in ("fit", "held_out"):
            sel = [r for r in pooled if r.metric in metrics and r.split == split]
            all_errs += sel
            med, n, missing = median_abs(sel)
            cells.append("-" if med is None else f"{med:.1f}% (n={n}{f', {missing} none' if missing else ''})")
        med, n, _ = median_abs(all_errs)
        target = TARGETS.get(target_key) if target_key else None
        cells.append("no points" if not all_errs else ("-" if med is None else f"{med:.1f}% (n={n})"))
        cells.append("-" if target is None else f"<= {target:g}%")
        cells.append("-" if target is None or med is None else ("yes" if med <= target else "NO"))
        out.append(cells)
    started = [r for r in rows if r.metric == "started"]
    cells = ["started vs fits"]
    for sel in ([r for r in started if r.split == "fit"], [r for r in started if r.split == "held_out"], started):
        agree = sum(1 for r in sel if r.predicted == r.published)
        cells.append(f"{agree}/{len(sel)} agree" if sel else "-")
    all_agree = all(r.predicted == r.published for r in started)
    out.append([*cells, "all agree", "-" if not started else ("yes" if all_agree else "NO")])
    header = ["metric", "fit half |err|", "held-out |err|", "all |err|", "target", "met?"]
    return format_table(header, out)


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    if metric == "started":
        return "yes" if value else "no"
    return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def points_table(rows: list[Row]) -> str:
    """One line per point and metric: published, predicted, signed error (match/MISMATCH for started)."""
    body = []
    for r in rows:
        if r.metric == "started":
            err = "-" if r.predicted is None else ("match" if r.predicted == r.published else "MISMATCH")
        else:
            err = "-" if r.error_pct is None else f"{r.error_pct:+.1f}%"
        body.append(
            [
                r.point,
                "held" if r.split == "held_out" else "fit",
                r.metric,
                _fmt(r.published, r.metric),
                _fmt(r.predicted, r.metric),
                err,
            ]
        )
    return format_table(["point", "half", "metric", "published", "predicted", "error"], body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary-only", action="store_true", help="print the summary table only")
    args = parser.parse_args()
    published = load_published()
    rows, notes = predict_all()
    print(f"revision: {source_revision(('planner', 'bench'))}")
    print(
        f"{len(published.points)} published points ({len(published.split('fit'))} fit, "
        f"{len(published.split('held_out'))} held out), planner uncalibrated"
    )
    if not args.summary_only:
        print("\n" + points_table(rows))
        print("\nhow conditions were mapped:")
        for point, point_notes in notes.items():
            print(f"  {point}: {'; '.join(point_notes)}")
        problems = {r.point: r.problem for r in rows if r.problem}
        if problems:
            print("\nno figure predicted (the planner's reason):")
            for point, why in problems.items():
                print(f"  {point}: {why}")
    print("\n" + summary_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
