"""Saved benchmark results as runs a calibration fits: the shell of `python -m planner calibrate`.

Like the engine's command line, this file is a shell around its package, and the only planner
module that reads a reports document (tests/test_import_direction.py lists it): the planner itself
predicts from plain numbers (planner.calibration.CalibrationRun) and never sees a BenchmarkResult.

A bundled target records what it ran (quant, device, threads, batch limit) and its model is the
bundled one; a remote target records only its URL and model name, so the user says what served it
(--model, --gpu, --engine, --format). Each run of a result becomes one CalibrationRun: a fixed
concurrency (sync counts as 1), its mean prompt and output tokens as the server counted them, its
median TTFT, median TPOT and output tok/s with the 95% intervals of the two medians, and the scatter
of its gaps between one-token chunks (what a pass's time varies by: planner.calibrate.gap_spread).
Rate profiles (constant, poisson) set no concurrency the planner can predict, so they are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from planner.calibrate import gap_spread
from planner.calibration import CalibrationRun, MedianIntervals, Metrics
from planner.errors import PlannerError
from reports.benchmark_result import BenchmarkResult, BundledTargetDoc, RunDoc, load_benchmark_result
from reports.records import is_measured
from reports.store import DocumentError

BUNDLED_MODEL = "smollm2-135m"


@dataclass(frozen=True, slots=True)
class ServedBy:
    """What a remote target ran on, from the command line (None: not given)."""

    model: str | None = None
    gpu: str | None = None
    engine: str | None = None
    format: str | None = None
    engine_version: str | None = None  # vLLM's release or generation: the memory rule the fit plans


def concurrency_of(profile: str) -> int | None:
    """In-flight requests a closed-loop profile keeps: sync is 1, concurrency:N is N, rate profiles None."""
    if profile == "sync":
        return 1
    kind, _, value = profile.partition(":")
    if kind == "concurrency" and value.isdigit() and int(value) >= 1:
        return int(value)
    return None


MAX_GAPS = 100_000  # plenty for a quartile; a million-token result would otherwise cost seconds of sorting


def one_token_gaps(run: RunDoc) -> list[float]:
    """Seconds between a measured request's consecutive chunks where the later one carries one token
    (the first MAX_GAPS of them, in record order)."""
    gaps = (
        gap
        for r in run.records
        if r.ok and is_measured(r)
        for gap, tokens in zip(r.itl_s, r.chunk_tokens[1:], strict=True)
        if tokens == 1
    )
    return list(islice(gaps, MAX_GAPS))


def _run(doc: BenchmarkResult, run: RunDoc, source: str, served: ServedBy) -> CalibrationRun:
    s = run.summary
    c = concurrency_of(run.profile)
    if c is None:
        raise PlannerError(f"{source}: profile {run.profile} has no fixed concurrency; calibrate from concurrency runs")
    if not s.completed or not s.total_input_tokens or not s.total_output_tokens:
        raise PlannerError(f"{source}: run {run.profile} completed no request with token counts")
    target = doc.target
    if isinstance(target, BundledTargetDoc):
        model = served.model or BUNDLED_MODEL
        gpu = "cpu" if target.device == "cpu" else served.gpu
        engine, fmt, threads, seqs = "bundled", target.quant, target.threads, target.max_num_seqs
        if gpu is None:
            raise PlannerError(f"{source}: the bundled engine ran on {target.device}; say which GPU with --gpu")
    else:
        missing = [f"--{k}" for k in ("model", "gpu", "engine", "format") if getattr(served, k) is None]
        if missing:
            raise PlannerError(f"{source}: a remote target does not record what served it; give {', '.join(missing)}")
        model, gpu, engine, fmt = served.model, served.gpu, served.engine, served.format
        threads, seqs = None, None
    assert model is not None and gpu is not None and engine is not None and fmt is not None
    return CalibrationRun(
        id=doc.id,
        source=source,
        profile=run.profile,
        model=model,
        gpu=gpu,
        engine=engine,
        engine_version=served.engine_version,
        format=fmt,
        threads=threads,
        max_num_seqs=seqs,
        input_tokens=round(s.total_input_tokens / s.completed),
        cached_input_tokens=round((s.cached_input_tokens or 0) / s.completed),
        output_tokens=round(s.total_output_tokens / s.completed),
        concurrency=c,
        requests=s.completed + s.failed,
        gap_spread=gap_spread(one_token_gaps(run)),
        measured=Metrics(
            ttft_ms=s.median_ttft_ms or None,
            tpot_ms=s.median_tpot_ms or None,
            output_tok_s=s.output_throughput or None,
        ),
        measured_ci95=median_intervals(run),
    )


def median_intervals(run: RunDoc) -> MedianIntervals | None:
    """The result's 95% intervals of its median TTFT and TPOT, where it has them (None: neither)."""
    s = run.summary
    ttft, tpot = s.p50_ttft_ms_ci95, s.p50_tpot_ms_ci95
    if ttft is None and tpot is None:
        return None
    return MedianIntervals(ttft_ms=ttft, tpot_ms=tpot)


def runs_of(doc: BenchmarkResult, source: str, served: ServedBy = ServedBy()) -> list[CalibrationRun]:
    """Every run of one result (a sweep over concurrency gives several)."""
    return [_run(doc, run, source, served) for run in doc.runs]


def load_runs(paths: list[str], served: ServedBy = ServedBy()) -> list[CalibrationRun]:
    """The runs of each result file, in order; a missing or corrupt file is one PlannerError line."""
    out: list[CalibrationRun] = []
    for path in paths:
        try:
            doc = load_benchmark_result(Path(path).expanduser())
        except DocumentError as exc:
            raise PlannerError(f"cannot use {path} as a measured run: {exc}") from exc
        out += runs_of(doc, path, served)
    return out
