"""Metric definitions: pure functions from `RequestRecord`s to a `BenchmarkSummary`.

The two types are parts of the saved result and live in `reports`; the arithmetic is here.

No I/O and no clocks: every figure here is recomputed from the records alone
(STYLE.md §6), following DESIGN.md "Metric definitions", which match vLLM's
`bench serve`. Summary keys match vLLM's result JSON where one exists.

Two rules set this module apart from its peers (STYLE.md §4):
- A value that cannot be measured is None, never 0 (no empty list averages to 0 ms).
- Failures are counted by kind and kept out of the latency figures, never dropped.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from reports.records import ErrorKind, RequestRecord, TokenSource, is_measured
from reports.stats import bootstrap_ci, min_samples, percentile
from reports.summary import BenchmarkSummary, ErrorSample, TurnFigures

PERCENTILES = (50, 90, 95, 99)
# A median whose 95% interval reaches this far from it is flagged: on the 2-core VM a 40-request closed
# loop at concurrency 2 or 8 pins its median TPOT only to about +-10% (requests whose output holds another's
# prompt pass and requests whose output does not fall in two groups, and the median sits between them),
# which is wider than the differences a launch review compares (docs/BENCHMARKS.md, planner calibration).
WIDE_MEDIAN = 0.10
FEW_SAMPLES_FOR_P99 = min_samples(99)  # below this many values, p99 is close to the maximum: a warning says so
FIRST_ERRORS_KEPT = 5
PEAK_WINDOW_S = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Slo:
    """Per-request latency limits in milliseconds; None leaves that limit out."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            limit = getattr(self, f.name)
            if limit is not None and not (math.isfinite(limit) and limit > 0):
                raise ValueError(f"SLO {f.name} must be a positive number of milliseconds or None, got {limit}")

    def met_by(self, record: RequestRecord) -> bool:
        """Whether a request met every limit that is set. A failed request never does, and neither does
        one whose TTFT or E2E cannot be measured. TPOT is vacuous for a response of fewer than 2 tokens
        (there is no time per output token to exceed), but an unknown token count fails it."""
        if not record.ok:
            return False
        for limit_ms, value_s in ((self.ttft_ms, record.ttft_s), (self.e2e_ms, record.e2e_s)):
            if limit_ms is not None and (value_s is None or value_s * 1000 > limit_ms):
                return False
        if self.tpot_ms is None or (record.output_tokens is not None and record.output_tokens < 2):
            return True
        tpot_s = record.tpot_s
        return tpot_s is not None and tpot_s * 1000 <= self.tpot_ms


def _distribution(name: str, values_ms: list[float], with_ci: bool) -> dict[str, Any]:
    """mean/median/std/pXX fields for one metric (std with ddof=0, as vLLM), plus p50/p99 intervals."""
    data = np.asarray(values_ms, dtype=float)
    empty = data.size == 0
    out: dict[str, Any] = {
        f"mean_{name}_ms": None if empty else float(data.mean()),
        f"median_{name}_ms": percentile(values_ms, 50),
        f"std_{name}_ms": None if empty else float(data.std()),
    }
    for q in PERCENTILES:
        out[f"p{q}_{name}_ms"] = percentile(values_ms, q)
    if with_ci:
        out[f"p50_{name}_ms_ci95"] = bootstrap_ci(values_ms, 50)
        out[f"p99_{name}_ms_ci95"] = bootstrap_ci(values_ms, 99)
    return out


def error_key(record: RequestRecord) -> str:
    """The errors_by_kind key of a failed request: "http_500" for an HTTP status, else the error kind."""
    if record.error_kind is ErrorKind.HTTP and record.http_status is not None:
        return f"http_{record.http_status}"
    return str(record.error_kind)


def _total(records: list[RequestRecord], attr: str, warnings: list[str]) -> int | None:
    """Sum of a token count over records; None (and a warning) when any record lacks it."""
    counts = [getattr(r, attr) for r in records]
    unknown = sum(c is None for c in counts)
    if unknown:
        warnings.append(f"{attr} unknown for {unknown} successful request(s), so its total is not measurable")
        return None
    return sum(counts)


def _peak_output_throughput(records: list[RequestRecord], start_s: float | None) -> float | None:
    """Most output tokens arriving in one 1-second window; windows start at the first send."""
    times = np.array([t for r in records for t in r.chunk_times_s], dtype=float)
    if start_s is None or times.size == 0:
        return None
    tokens = np.array([n for r in records for n in r.chunk_tokens], dtype=float)
    offsets = times - start_s
    if offsets.min() < 0:
        raise ValueError(f"a content chunk arrived {-offsets.min():.6f} s before the first send; check the run clock")
    per_window = np.bincount((offsets // PEAK_WINDOW_S).astype(np.int64), weights=tokens)
    return float(per_window.max()) / PEAK_WINDOW_S


_NO_VALUE_REASONS = {
    "TTFT": "no successful request recorded a first token",
    "TPOT": "no successful request has 2 or more counted output tokens",
    "ITL": "no successful request streamed 2 or more content chunks",
    "E2E latency": "no successful request recorded its last byte",
}


def _sample_warnings(samples: dict[str, tuple[int, str]], completed: int) -> list[str]:
    """One line per latency metric resting on too few values, or on none although requests succeeded."""
    out = []
    for label, (n, unit) in samples.items():
        if 0 < n < FEW_SAMPLES_FOR_P99:
            out.append(f"p99 {label} rests on {n} {unit} (fewer than {FEW_SAMPLES_FOR_P99})")
        elif n == 0 and completed:
            out.append(f"{label} not measurable: {_NO_VALUE_REASONS[label]}")
    return out


def _wide_median_warnings(figures: dict[str, Any], samples: dict[str, tuple[int, str]]) -> list[str]:
    """One line per median (TTFT, TPOT) whose 95% interval reaches more than WIDE_MEDIAN from it: a figure
    another run of the same conditions can move by that much, so a difference smaller than it is not one."""
    out = []
    for label, name in (("TTFT", "ttft"), ("TPOT", "tpot")):
        median, ci = figures[f"median_{name}_ms"], figures[f"p50_{name}_ms_ci95"]
        if not median or ci is None:
            continue
        low, high = ci[0] / median - 1, ci[1] / median - 1
        if max(-low, high) > WIDE_MEDIAN:
            out.append(
                f"median {label} {median:.1f} ms is known only to {low * 100:+.0f}% / {high * 100:+.0f}% (95% "
                f"interval over its {samples[label][0]} requests): more requests or repeated runs pin it closer"
            )
    return out


def ttft_by_turn(good: list[RequestRecord]) -> list[TurnFigures]:
    """TTFT per turn of multi-turn runs, then turns 2+ together: turn 1 has no history to reuse, later
    turns resend theirs, so the gap between the rows is what a prefix cache saves. [] without turns."""
    turns = sorted({r.turn for r in good if r.turn is not None})
    if not turns:
        return []
    groups = [(str(t), [r for r in good if r.turn == t]) for t in turns]
    if len(turns) > 2:
        groups.append(("2+", [r for r in good if r.turn is not None and r.turn >= 2]))
    out = []
    for label, group in groups:
        ttft = [r.ttft_s * 1000 for r in group if r.ttft_s is not None]
        inputs = [r.input_tokens for r in group if r.input_tokens is not None]
        out.append(
            TurnFigures(
                turn=label,
                requests=len(group),
                median_ttft_ms=percentile(ttft, 50),
                p90_ttft_ms=percentile(ttft, 90),
                mean_input_tokens=float(np.mean(inputs)) if inputs else None,
            )
        )
    return out


def summarize(records: Iterable[RequestRecord], slo: Slo | None = None) -> BenchmarkSummary:
    """The summary of a run's measured (non-warm-up) records; failures are counted, not timed."""
    records = list(records)
    cancelled = [r for r in records if not r.warmup and r.error_kind == ErrorKind.CANCELLED]
    abandoned = [r for r in records if not r.warmup and r.error_kind == ErrorKind.ABANDONED]
    measured = [r for r in records if is_measured(r)]
    good = [r for r in measured if r.ok]
    bad = [r for r in measured if not r.ok]
    warnings: list[str] = []
    if not measured:
        warnings.append("no measured requests (none ran, or all were warm-up)")
    if not good:
        warnings.append("no successful requests")
    if cancelled:
        warnings.append(f"{len(cancelled)} requests were cancelled when the run was stopped (not counted as failures)")
    if abandoned:
        warnings.append(
            f"{len(abandoned)} requests were abandoned on purpose by the client (cancellation load; "
            "not counted as failures, not timed)"
        )

    start_s = min((r.send_s for r in measured), default=None)
    end_s = max((r.end_s for r in measured if r.end_s is not None), default=None)
    duration_s = None if start_s is None or end_s is None or end_s <= start_s else end_s - start_s
    if measured and duration_s is None:
        warnings.append("duration not measurable: no measured request ended after the first send")

    def per_s(count: float | None) -> float | None:
        return None if count is None or duration_s is None else count / duration_s

    total_in = _total(good, "input_tokens", warnings)
    cached = [r.cached_input_tokens for r in good if r.cached_input_tokens is not None]
    total_out = _total(good, "output_tokens", warnings)
    goodput = None if slo is None else per_s(sum(slo.met_by(r) for r in good))

    ttft = [r.ttft_s * 1000 for r in good if r.ttft_s is not None]
    tpot = [r.tpot_s * 1000 for r in good if r.tpot_s is not None]
    itl = [gap * 1000 for r in good for gap in r.itl_s]
    e2el = [r.e2e_s * 1000 for r in good if r.e2e_s is not None]
    samples = {
        "TTFT": (len(ttft), "requests"),
        "TPOT": (len(tpot), "requests"),
        "ITL": (len(itl), "chunk gaps"),
        "E2E latency": (len(e2el), "requests"),
    }
    warnings += _sample_warnings(samples, len(good))

    figures = {**_distribution("ttft", ttft, with_ci=True), **_distribution("tpot", tpot, with_ci=True)}
    warnings += _wide_median_warnings(figures, samples)

    errors = Counter(error_key(r) for r in bad)
    if bad:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(errors.items()))
        warnings.append(f"{len(bad)} of {len(measured)} requests failed ({kinds})")
    first_bad = sorted(bad, key=lambda r: (r.send_s, r.request_id))[:FIRST_ERRORS_KEPT]
    sources = Counter(str(r.token_source) for r in good if r.token_source is not None)
    if sources.get(TokenSource.CHUNKS):
        n_chunked = sources[TokenSource.CHUNKS]
        warnings.append(f"output tokens of {n_chunked} request(s) counted one per chunk (no usage, no tokenizer)")

    lags = [r.schedule_lag_s * 1000 for r in measured if r.schedule_lag_s is not None]
    queues = [r.queue_s * 1000 for r in measured]
    return BenchmarkSummary(
        completed=len(good),
        failed=len(bad),
        cancelled=len(cancelled),
        abandoned=len(abandoned),
        total_input_tokens=total_in,
        cached_input_tokens=sum(cached) if cached else None,
        total_output_tokens=total_out,
        duration_s=duration_s,
        request_throughput=per_s(len(good)),
        output_throughput=per_s(total_out),
        total_token_throughput=None if total_in is None or total_out is None else per_s(total_in + total_out),
        request_goodput=goodput,
        peak_output_throughput=_peak_output_throughput(good, start_s),
        **figures,
        **_distribution("itl", itl, with_ci=False),
        **_distribution("e2el", e2el, with_ci=False),
        errors_by_kind=dict(sorted(errors.items())),
        first_errors=[
            ErrorSample(request_id=r.request_id, kind=error_key(r), excerpt=r.error_excerpt) for r in first_bad
        ],
        token_sources=dict(sorted(sources.items())),
        max_schedule_lag_ms=max(lags, default=None),
        p99_schedule_lag_ms=percentile(lags, 99),
        mean_queue_ms=None if not queues else float(np.mean(queues)),
        ttft_by_turn=ttft_by_turn(good),
        warnings=warnings,
    )
