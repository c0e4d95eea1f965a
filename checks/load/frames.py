"""Tables for charts, computed from a `BenchmarkResult`'s raw records (nothing re-measured).

The Benchmark page draws these with Altair; they are plain pandas so tests check them
without Streamlit. Every row comes from the per-request records, in the same units
as the summary (ms, tok/s).
"""

from __future__ import annotations

import math

import pandas as pd

from reports.benchmark_result import BenchmarkResult, RunDoc

SUMMARY_ROWS = [
    ("TTFT", "ttft"),
    ("TPOT", "tpot"),
    ("ITL", "itl"),
    ("E2E latency", "e2el"),
]


def request_frame(result: BenchmarkResult) -> pd.DataFrame:
    """One row per measured successful request: run, TTFT, TPOT, E2E (ms), output tokens."""
    rows = []
    for run in result.runs:
        for r in run.records:
            if r.warmup or not r.ok:
                continue
            rows.append(
                {
                    "run": run.profile,
                    "request_id": r.request_id,
                    "ttft_ms": None if r.ttft_s is None else r.ttft_s * 1000,
                    "tpot_ms": None if r.tpot_s is None else r.tpot_s * 1000,
                    "e2e_ms": None if r.e2e_s is None else r.e2e_s * 1000,
                    "output_tokens": r.output_tokens,
                }
            )
    return pd.DataFrame(rows, columns=["run", "request_id", "ttft_ms", "tpot_ms", "e2e_ms", "output_tokens"])


def throughput_frame(result: BenchmarkResult, window_s: float = 1.0) -> pd.DataFrame:
    """Output tokens per second in consecutive windows from each run's first measured send."""
    rows = []
    for run in result.runs:
        records = [r for r in run.records if not r.warmup]
        if not records:
            continue
        start = min(r.send_s for r in records)
        counts: dict[int, int] = {}
        for r in records:
            if not r.ok:
                continue
            for t, n in zip(r.chunk_times_s, r.chunk_tokens, strict=True):
                slot = math.floor((t - start) / window_s)
                counts[slot] = counts.get(slot, 0) + n
        last = max(counts, default=-1)
        rows += [
            {"run": run.profile, "t_s": i * window_s, "output_tok_s": counts.get(i, 0) / window_s}
            for i in range(last + 1)
        ]
    return pd.DataFrame(rows, columns=["run", "t_s", "output_tok_s"])


SERVER_SERIES = {"running": "running requests", "waiting": "waiting requests", "kv_cache_usage": "KV-cache usage %"}


def server_metrics_frame(result: BenchmarkResult) -> pd.DataFrame:
    """The target's own /metrics over the load, one row per scrape and series (KV usage in percent);
    empty when nothing was scraped or the names were not recognised. Failed scrapes leave gaps."""
    rows = []
    timeline = result.metrics
    if timeline is not None and timeline.source is not None:
        for sample in timeline.samples:
            for field, label in SERVER_SERIES.items():
                value = getattr(sample, field)
                if value is not None:
                    rows.append(
                        {"t_s": sample.t_s, "series": label, "value": value * (100 if field == "kv_cache_usage" else 1)}
                    )
    return pd.DataFrame(rows, columns=["t_s", "series", "value"])


def throughput_window_s(result: BenchmarkResult, points: int = 20) -> float:
    """1-s windows for runs of 20 s or more; shorter runs get `points` windows (at least 0.1 s) so the
    throughput line has points to draw rather than a single sample."""
    durations = [run.summary.duration_s or 0.0 for run in result.runs]
    longest = max(durations, default=0.0)
    return 1.0 if longest >= points else max(0.1, round(longest / points, 2))


def summary_frame(run: RunDoc) -> pd.DataFrame:
    """Mean / median / p90 / p99 (ms) of each latency metric of one run, for a table."""
    s = run.summary
    rows = [
        {"metric": label, **{stat: getattr(s, f"{stat}_{key}_ms") for stat in ("mean", "median", "p90", "p99")}}
        for label, key in SUMMARY_ROWS
    ]
    return pd.DataFrame(rows)


def sweep_frame(result: BenchmarkResult) -> pd.DataFrame:
    """Latency against achieved request rate, one row per sweep step (empty for a single run)."""
    if result.sweep is None:
        return pd.DataFrame(columns=["run", "request_rate", "p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "meets_slo"])
    rows = []
    for run in result.runs:
        s = run.summary
        rows.append(
            {
                "run": run.profile,
                "request_rate": s.request_throughput,
                "p50_ttft_ms": s.p50_ttft_ms,
                "p99_ttft_ms": s.p99_ttft_ms,
                "p50_tpot_ms": s.p50_tpot_ms,
                "meets_slo": run.meets_slo,
            }
        )
    return pd.DataFrame(rows).sort_values("request_rate")
