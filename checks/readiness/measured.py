"""The one place that reads the benchmark result (`ctx.benchmark`) for the readiness checks.

Performance and resource checks judge plain inputs (a list of `RequestRecord`, a
`valid` flag, the sweep's best rate, resource samples); this module pulls them out of
the typed result document (`reports.benchmark_result.BenchmarkResult`), so a change in
that document's shape touches only `measurement()`.

Which run is judged: a single run is itself. A sweep has one run per step at rising
load; the checks hold the endpoint to the SLO at the declared load, so they judge the
lightest step whose measured rate reached `--target-qps`. Without a declared rate, or
when no step reached it, they judge the step that carried the most load: fail closed,
never the flattering sync step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from checks.readiness.check import CheckContext
from reports.benchmark_result import BenchmarkResult, SloDoc
from reports.records import RequestRecord, is_measured
from reports.resources import ResourceSample


@dataclass(frozen=True, slots=True)
class Measurement:
    """What the checks judge. `records`: the judged run's measured requests (no warm-up, no cancelled)."""

    records: list[RequestRecord]
    valid: bool
    invalid_reasons: list[str]
    run_label: str  # which run the records are from, for evidence: "concurrency:4", "sweep step 3 of 7 (poisson:2.5)"
    sweep_ran: bool = False
    max_rate_meeting_slo: float | None = None  # req/s; None: no sweep, or no step met the SLO
    sweep_slo_ms: dict[str, float | None] | None = None  # the limits the sweep judged its steps by; None: none
    resource_samples: list[ResourceSample] = field(default_factory=list)
    measured_start_s: float | None = None  # run clock: the first measured send of the whole benchmark


def choose_step(throughputs: Sequence[float | None], target_qps: float | None) -> int:
    """Index of the sweep step to judge (see the module docstring); a step with no measured rate is never chosen
    over one with a rate, and with no rate anywhere the last step (the heaviest load applied) is taken."""
    rated = [(rate, i) for i, rate in enumerate(throughputs) if rate is not None]
    if not rated:
        return len(throughputs) - 1
    if target_qps is not None:
        reaching = [(rate, i) for rate, i in rated if rate >= target_qps]
        if reaching:
            return min(reaching)[1]
    return max(rated)[1]


def _slo_ms(slo: SloDoc | None) -> dict[str, float | None] | None:
    if slo is None:
        return None
    return {"ttft": slo.ttft_ms, "tpot": slo.tpot_ms, "e2e": slo.e2e_ms}


def measurement(ctx: CheckContext) -> Measurement | None:
    """The benchmark's figures as plain inputs; None when no benchmark ran or was handed over."""
    bench: BenchmarkResult | None = ctx.benchmark
    if bench is None or not bench.runs:
        return None
    runs = bench.runs
    if bench.sweep is not None:
        index = choose_step([run.summary.request_throughput for run in runs], ctx.declared.target_qps)
        label = f"sweep step {index + 1} of {len(runs)} ({runs[index].profile})"
    else:
        index, label = 0, runs[0].profile
    reasons = [
        f"{run.profile}: {reason}"
        for run in runs
        if not run.self_check.valid
        for reason in (run.self_check.reasons or ["client self-check failed"])
    ]
    valid = bench.valid and not reasons
    sends = [r.send_s for run in runs for r in run.records if not r.warmup]
    return Measurement(
        records=[r for r in runs[index].records if is_measured(r)],
        valid=valid,
        invalid_reasons=reasons or ([] if valid else ["the result is marked invalid"]),
        run_label=label,
        sweep_ran=bench.sweep is not None,
        max_rate_meeting_slo=None if bench.sweep is None else bench.sweep.max_rate_meeting_slo,
        sweep_slo_ms=_slo_ms(bench.slo),
        resource_samples=list(bench.resources.samples),
        measured_start_s=min(sends, default=None),
    )
