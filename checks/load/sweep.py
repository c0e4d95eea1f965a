"""The `sweep` profile: a ladder of request rates from one-at-a-time to saturation.

Like guidellm's sweep: a `sync` run gives the rate one stream sustains, a
`concurrency:N` run the rate the server saturates at, and Poisson runs at evenly
spaced rates between them map latency against load. With an SLO, the answer is the
highest rate whose run still met it: at least `attainment` of its requests inside
every limit, no failures, a valid client self-check and no early stop. Each step is
bounded like a single run (request count and/or duration).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from checks.load.client import RequestOptions
from checks.load.endpoint import Endpoint
from checks.load.loadgen import ProgressCallback, RunLimits, RunResult, run_load
from checks.load.metrics import BenchmarkSummary, Slo, summarize
from checks.load.profiles import LoadProfile
from checks.load.prompts import PromptRequest
from checks.load.tokenizer import TextTokenizer

DEFAULT_SWEEP_RATES = 5  # Poisson steps between the sync and the saturation rate
DEFAULT_SATURATION_CONCURRENCY = 32
DEFAULT_ATTAINMENT = 0.95


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepOptions:
    rates: int = DEFAULT_SWEEP_RATES
    saturation_concurrency: int = DEFAULT_SATURATION_CONCURRENCY
    attainment: float = DEFAULT_ATTAINMENT  # share of requests that must meet the SLO at a step

    def __post_init__(self) -> None:
        if self.rates < 1:
            raise ValueError("a sweep needs at least one rate between sync and saturation")
        if self.saturation_concurrency < 2:
            raise ValueError("the saturation step needs a concurrency of at least 2")
        if not 0 < self.attainment <= 1:
            raise ValueError("attainment is a share of requests: above 0, at most 1")


@dataclass(slots=True)
class SweepStep:
    run: RunResult
    summary: BenchmarkSummary
    meets_slo: bool | None  # None without an SLO
    why_not: str | None = None


@dataclass(slots=True)
class SweepResult:
    steps: list[SweepStep]
    max_rate_meeting_slo: float | None  # requests/s of the best step that met the SLO
    stopped: str | None = None  # why the ladder ended early (cancel), else None


def step_limits(limits: RunLimits, step: int) -> RunLimits:
    """The limits of the sweep's step `step` after the sync one (0: saturation, then each Poisson rate).

    Every option of the sweep's limits carries over; only the warm-up (the sync step had it)
    and the seed (each rate draws its own arrivals) change."""
    return replace(limits, warmup_requests=0, seed=limits.seed + step)


def step_verdict(
    run: RunResult, summary: BenchmarkSummary, slo: Slo | None, attainment: float
) -> tuple[bool | None, str | None]:
    """Whether one step met the SLO, and if not, why (the first reason found)."""
    if slo is None:
        return None, None
    if not run.self_check.valid:
        return False, "client self-check failed: " + "; ".join(run.self_check.reasons)
    if run.stopped_early:
        return False, run.stopped_early
    if summary.failed:
        return False, f"{summary.failed} requests failed"
    if not summary.completed or summary.request_goodput is None or not summary.request_throughput:
        return False, "nothing completed"
    share = summary.request_goodput / summary.request_throughput
    if share < attainment:
        return False, f"{share:.0%} of requests met the SLO (need {attainment:.0%})"
    return True, None


async def run_sweep(
    endpoint: Endpoint,
    requests: list[PromptRequest],
    limits: RunLimits,
    slo: Slo | None = None,
    options: SweepOptions | None = None,
    *,
    tokenizer: TextTokenizer | None = None,
    request_options: RequestOptions | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    origin: float | None = None,
) -> SweepResult:
    """Sync, saturation, then Poisson rates in between; every step's records are kept."""
    opts = options or SweepOptions()
    cancel = cancel or threading.Event()
    steps: list[SweepStep] = []

    async def step(profile: LoadProfile, run_limits: RunLimits) -> SweepStep:
        run = await run_load(
            endpoint,
            requests,
            profile,
            run_limits,
            tokenizer=tokenizer,
            options=request_options,
            progress=progress,
            cancel=cancel,
            origin=origin,
        )
        summary = summarize(run.records, slo)
        meets, why = step_verdict(run, summary, slo, opts.attainment)
        steps.append(SweepStep(run, summary, meets, why))
        return steps[-1]

    sync = await step(LoadProfile("sync", concurrency=1), limits)
    if cancel.is_set():
        return _result(steps, "cancelled")
    saturated = await step(LoadProfile("concurrency", concurrency=opts.saturation_concurrency), step_limits(limits, 0))
    low, high = sync.summary.request_throughput, saturated.summary.request_throughput
    if cancel.is_set() or not low or not high:
        return _result(steps, "cancelled" if cancel.is_set() else "no throughput measured at sync or saturation")
    if high <= low:
        return _result(steps, f"saturation ({high:.2f} req/s) was not above sync ({low:.2f} req/s): no rates between")
    for i in range(1, opts.rates + 1):
        rate = low + (high - low) * i / (opts.rates + 1)
        await step(LoadProfile("poisson", rate=rate), step_limits(limits, i))
        if cancel.is_set():
            return _result(steps, "cancelled")
    return _result(steps, None)


def _result(steps: list[SweepStep], stopped: str | None) -> SweepResult:
    rates = [s.summary.request_throughput for s in steps if s.meets_slo and s.summary.request_throughput]
    return SweepResult(steps, max(rates) if rates else None, stopped)
