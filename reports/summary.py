"""`BenchmarkSummary`: the figures of one run's measured window, as saved in a benchmark result.

Only the shape lives here; `checks.load.metrics.summarize` computes it from the
records (DESIGN.md "Metric definitions"). Field names follow vLLM's result JSON
where one exists, units are in the names, and a figure that could not be measured
is None, never 0 (STYLE.md §4). The model is frozen: a summary is a fact about
records already taken, and `summarize(records) == summary` must hold after a file
round trip.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

Interval = tuple[float, float]


class ErrorSample(BaseModel):
    """One of the first failures of a run, kept so the console and the report can show what went wrong."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: int
    kind: str = Field(description="the errors_by_kind key, e.g. 'http_500', 'timeout'")
    excerpt: str | None = Field(description="start of the response body or error text, at most 200 characters")


class TurnFigures(BaseModel):
    """TTFT of one turn position of multi-turn runs ('1', '2', ..., and '2+' for every later turn together)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    turn: str
    requests: int = Field(description="successful requests at this turn")
    median_ttft_ms: float | None
    p90_ttft_ms: float | None
    mean_input_tokens: float | None = Field(description="prompt tokens with the history, as the server counted them")


class BenchmarkSummary(BaseModel):
    """Figures for the measured window. Latencies in ms over successful requests; None = not measurable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    completed: int
    failed: int
    cancelled: int = Field(description="stopped by a cancel before they finished: neither timed nor failures")
    abandoned: int = Field(
        0, description="given up on purpose by the load's client (--cancel-rate): neither timed nor failures"
    )
    total_input_tokens: int | None
    cached_input_tokens: int | None = Field(
        None,
        description="of the input tokens, those the server said its prefix cache served "
        "(usage.prompt_tokens_details.cached_tokens); None when no response said",
    )
    total_output_tokens: int | None
    duration_s: float | None
    request_throughput: float | None
    output_throughput: float | None = Field(description="tok/s")
    total_token_throughput: float | None = Field(description="tok/s, input + output")
    request_goodput: float | None = Field(description="req/s that met the SLO; None when no SLO was given")
    peak_output_throughput: float | None = Field(
        description="most output tokens in one 1-s window aligned to the first send"
    )
    mean_ttft_ms: float | None
    median_ttft_ms: float | None
    std_ttft_ms: float | None
    p50_ttft_ms: float | None
    p90_ttft_ms: float | None
    p95_ttft_ms: float | None
    p99_ttft_ms: float | None
    p50_ttft_ms_ci95: Interval | None
    p99_ttft_ms_ci95: Interval | None
    mean_tpot_ms: float | None
    median_tpot_ms: float | None
    std_tpot_ms: float | None
    p50_tpot_ms: float | None
    p90_tpot_ms: float | None
    p95_tpot_ms: float | None
    p99_tpot_ms: float | None
    p50_tpot_ms_ci95: Interval | None
    p99_tpot_ms_ci95: Interval | None
    mean_itl_ms: float | None
    median_itl_ms: float | None
    std_itl_ms: float | None
    p50_itl_ms: float | None
    p90_itl_ms: float | None
    p95_itl_ms: float | None
    p99_itl_ms: float | None
    mean_e2el_ms: float | None
    median_e2el_ms: float | None
    std_e2el_ms: float | None
    p50_e2el_ms: float | None
    p90_e2el_ms: float | None
    p95_e2el_ms: float | None
    p99_e2el_ms: float | None
    errors_by_kind: dict[str, int] = Field(default_factory=dict)
    first_errors: list[ErrorSample] = Field(default_factory=list)
    token_sources: dict[str, int] = Field(default_factory=dict, description="over successful requests")
    max_schedule_lag_ms: float | None = None
    p99_schedule_lag_ms: float | None = None
    mean_queue_ms: float | None = None
    ttft_by_turn: list[TurnFigures] = Field(
        default_factory=list, description="multi-turn runs: TTFT per turn, so a prefix cache's effect shows"
    )
    warnings: list[str] = Field(default_factory=list)
