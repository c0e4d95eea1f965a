"""Performance checks: the measured run held to an SLO profile.

The rules, which are the point of the checklist:

- No benchmark (none ran, none handed over with --from): every line is ERROR, "no
  measurement". An INVALID run (the client's self-check failed, so its timings measure
  the client as much as the server) makes every line ERROR too, never PASS.
- Percentile lines (TTFT p50/p95/p99, TPOT p50/p99, E2E p99, per-stream output rate)
  are judged on the bootstrap 95% interval of that percentile, computed by
  `reports.stats.bootstrap_ci` with the summary's seed, so a p50 or p99 interval
  here is the one the benchmark summary shows. PASS when the whole interval is inside
  the limit, FAIL when it is wholly outside, WARN when the limit falls inside it (not
  enough evidence: run more requests). A tail percentile also needs enough requests to
  have a tail: p99 from fewer than 100 values is close to the maximum of a small sample,
  so below `min_samples(q)` an interval inside the limit is still only WARN.
- Error rate and goodput are shares of the measured requests, judged on the observed
  share (a count, not a tail estimate); the evidence shows its Wilson 95% interval.
- Capacity: with a declared --target-qps, the sweep's highest rate that met the SLO must
  reach it. No sweep: ERROR (run with a sweep). A sweep where no rate met it: FAIL.
- A limit the profile does not set makes no line at all (`performance_checks(profile)`
  lists only what it sets), so a report never shows a SKIP for a figure nobody asked for.
  Error rate (the profile always has one) and capacity (SKIP without --target-qps) are
  always listed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from checks.load.metrics import Slo, error_key
from checks.readiness.check import Check, CheckContext, CheckFn
from checks.readiness.measured import Measurement, measurement
from checks.readiness.slo import goodput_slo
from reports.check_result import Category, CheckResult, CheckStatus
from reports.markdown import figure
from reports.records import RequestRecord
from reports.slo_profile import SloProfile
from reports.stats import bootstrap_ci, min_samples, percentile

SUMMARY_SEED = 0  # the seed summarize() gives bootstrap_ci, so p50/p99 intervals match the summary's
WILSON_Z = 1.959964  # two-sided 95%

NO_MEASUREMENT = (
    "no measurement: no benchmark ran and none was handed over; run the checklist with its benchmark or pass --from"
)


@dataclass(frozen=True, slots=True)
class Metric:
    """A per-request figure: how to read it off a record, and how to talk about it."""

    key: str  # as in the profile's field names: ttft, tpot, e2e
    label: str
    value: Callable[[RequestRecord], float | None]
    remediation: str


METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        Metric(
            "ttft",
            "TTFT",
            lambda r: None if r.ttft_s is None else r.ttft_s * 1000,
            "Cut queueing and prefill: more replicas or a lower per-replica concurrency, chunked prefill, "
            "prefix caching, shorter prompts.",
        ),
        Metric(
            "tpot",
            "TPOT",
            lambda r: None if r.tpot_s is None else r.tpot_s * 1000,
            "Speed up decode: a smaller batch per replica, a lower-bit weight format, speculative decoding, "
            "or faster memory.",
        ),
        Metric(
            "e2e",
            "E2E latency",
            lambda r: None if r.e2e_s is None else r.e2e_s * 1000,
            "Shorten whole requests: cap max_tokens, fix TTFT and TPOT first, add replicas.",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Judgement:
    status: CheckStatus
    value: float
    interval: tuple[float, float]
    n: int
    verdict: str  # the second half of the message: why this status


def judge_percentile(values: Sequence[float], q: float, limit: float, *, upper: bool = True) -> Judgement | None:
    """Hold the q-th percentile of `values` to `limit` (at most when `upper`, else at least) by its bootstrap
    95% interval; None when there are no values."""
    point, ci = percentile(values, q), bootstrap_ci(values, q, seed=SUMMARY_SEED)
    if point is None or ci is None:
        return None
    low, high = ci
    inside = high <= limit if upper else low >= limit
    outside = low > limit if upper else high < limit
    n, need = len(values), min_samples(q)
    if outside:
        return Judgement(CheckStatus.FAIL, point, ci, n, "the whole 95% interval is beyond the limit")
    if inside and n >= need:
        return Judgement(CheckStatus.PASS, point, ci, n, "the whole 95% interval is within the limit")
    if inside:
        why = f"within the limit, but p{q:g} from {n} values is close to their maximum: run at least {need} requests"
        return Judgement(CheckStatus.WARN, point, ci, n, why)
    return Judgement(
        CheckStatus.WARN,
        point,
        ci,
        n,
        "the limit falls inside the 95% interval: not enough evidence, run more requests",
    )


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of a share: sane at 0 and n, unlike the normal approximation."""
    if n <= 0:
        raise ValueError("a share needs at least one trial")
    p, z2 = successes / n, WILSON_Z**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = WILSON_Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def stream_rates_tok_s(records: Sequence[RequestRecord]) -> list[float]:
    """Each successful request's decode rate after its first token, (output tokens - 1) / (E2E - TTFT).

    Requests with fewer than 2 counted tokens have no rate, and neither does one whose tokens all
    arrived at one instant (no time elapsed to divide by); both are left out, as TPOT leaves them out.
    """
    return [1 / r.tpot_s for r in records if r.ok and r.tpot_s is not None and r.tpot_s > 0]


def _measured(ctx: CheckContext, check: Check, need_records: bool = False) -> Measurement | CheckResult:
    """The measurement, or the ERROR every performance line gives without a valid one (or, when the line counts
    requests, without any measured request)."""
    m = measurement(ctx)
    if m is None:
        return check.error(NO_MEASUREMENT)
    if not m.valid:
        why = "the benchmark run is INVALID (client self-check failed), so its figures cannot show readiness"
        return check.error(f"{why}: fix the client side and rerun", evidence=m.invalid_reasons)
    if need_records and not m.records:
        return check.error(f"no measured requests in {m.run_label}")
    return m


def _interval_check(
    ctx: CheckContext,
    check: Check,
    label: str,
    q: float,
    limit: float,
    unit: str,
    upper: bool,
    values_of: Callable[[Measurement], list[float]],
) -> CheckResult:
    m = _measured(ctx, check)
    if isinstance(m, CheckResult):
        return m
    values = values_of(m)
    j = judge_percentile(values, q, limit, upper=upper)
    if j is None:
        return check.error(
            f"{label} not measurable: no successful request of {m.run_label} gave a value "
            f"({len(m.records)} measured requests)"
        )
    word = "at most" if upper else "at least"
    return check.result(
        j.status,
        f"{label} is {figure(j.value, unit)} ({word} {figure(float(limit), unit)}): {j.verdict}",
        value=j.value,
        threshold=limit,
        unit=unit,
        evidence=[
            f"95% bootstrap interval {figure(j.interval[0], None)}-{figure(j.interval[1], unit)} "
            f"(seed {SUMMARY_SEED}, 1000 resamples)",
            f"{j.n} values from {m.run_label}",
        ],
    )


def _percentile_fn(metric: Metric, q: int, limit: float) -> CheckFn:
    def values_of(m: Measurement) -> list[float]:
        return [v for r in m.records if r.ok and (v := metric.value(r)) is not None]

    async def run(ctx: CheckContext, check: Check) -> CheckResult:
        return _interval_check(ctx, check, f"{metric.label} p{q}", q, limit, "ms", True, values_of)

    return run


def _stream_rate_fn(limit: float) -> CheckFn:
    async def run(ctx: CheckContext, check: Check) -> CheckResult:
        return _interval_check(
            ctx,
            check,
            "Median per-stream output rate",
            50,
            limit,
            "tok/s",
            False,
            lambda m: stream_rates_tok_s(m.records),
        )

    return run


def _error_rate_fn(limit: float) -> CheckFn:
    async def run(ctx: CheckContext, check: Check) -> CheckResult:
        m = _measured(ctx, check, need_records=True)
        if isinstance(m, CheckResult):
            return m
        n = len(m.records)
        failed = [r for r in m.records if not r.ok]
        rate = len(failed) / n
        low, high = wilson_interval(len(failed), n)
        kinds = Counter(error_key(r) for r in failed)  # the summary's errors_by_kind keys
        status = CheckStatus.PASS if rate <= limit else CheckStatus.FAIL
        return check.result(
            status,
            f"{len(failed)} of {n} requests failed ({rate:.2%}; at most {limit:.2%} allowed)",
            value=rate,
            threshold=limit,
            unit="fraction",
            evidence=[f"Wilson 95% interval {low:.2%}-{high:.2%}", f"from {m.run_label}"]
            + [f"{kind}: {count}" for kind, count in sorted(kinds.items())],
        )

    return run


def _goodput_fn(slo: Slo, limit: float) -> CheckFn:
    async def run(ctx: CheckContext, check: Check) -> CheckResult:
        m = _measured(ctx, check, need_records=True)
        if isinstance(m, CheckResult):
            return m
        n = len(m.records)
        met = sum(slo.met_by(r) for r in m.records)
        share = met / n
        low, high = wilson_interval(met, n)
        limits = ", ".join(
            f"{k} <= {v:g} ms"
            for k, v in (("TTFT", slo.ttft_ms), ("TPOT", slo.tpot_ms), ("E2E", slo.e2e_ms))
            if v is not None
        )
        status = CheckStatus.PASS if share >= limit else CheckStatus.FAIL
        return check.result(
            status,
            f"{met} of {n} requests met every per-request limit ({share:.1%}; at least {limit:.0%} needed)",
            value=share,
            threshold=limit,
            unit="fraction",
            evidence=[
                f"per-request limits: {limits}; failed requests count as missing them",
                f"Wilson 95% interval {low:.1%}-{high:.1%}",
                f"from {m.run_label}",
            ],
        )

    return run


def _same_limits(a: dict[str, float | None], b: dict[str, float]) -> bool:
    keys = ("ttft", "tpot", "e2e")
    return all((a.get(k) is None) == (k not in b) and (k not in b or math.isclose(a[k], b[k])) for k in keys)  # type: ignore[arg-type]


def _capacity_fn(profile: SloProfile) -> CheckFn:
    async def run(ctx: CheckContext, check: Check) -> CheckResult:
        m = _measured(ctx, check)  # first: an invalid or missing run is ERROR on every line
        if isinstance(m, CheckResult):
            return m
        target = ctx.declared.target_qps
        if target is None:
            return check.skip("no target rate declared: pass --target-qps to check capacity")
        if not m.sweep_ran:
            return check.error("capacity needs a sweep: rerun the benchmark with the 'sweep' profile")
        wanted = profile.goodput_limits_ms()
        if m.sweep_slo_ms is None or not _same_limits(m.sweep_slo_ms, wanted):
            return check.error(
                f"the sweep judged its steps by {m.sweep_slo_ms or 'no SLO'}, not by profile {profile.name}'s "
                f"per-request limits {wanted}: rerun the sweep with this profile"
            )
        best = m.max_rate_meeting_slo
        if best is None:
            return check.result(
                CheckStatus.FAIL,
                f"no sweep rate met the SLO; {target:g} req/s was required",
                threshold=target,
                unit="req/s",
            )
        status = CheckStatus.PASS if best >= target else CheckStatus.FAIL
        return check.result(
            status,
            f"the highest rate meeting the SLO is {best:.3g} req/s (at least {target:g} req/s required)",
            value=best,
            threshold=target,
            unit="req/s",
            evidence=[
                f"per-request limits {wanted}; a step meets them when 95% of its requests do, none fail, "
                "and its self-check is valid"
            ],
        )

    return run


def _reference(profile: SloProfile) -> str:
    return f"SLO profile {profile.name} ({profile.source})"


def performance_checks(profile: SloProfile) -> list[Check]:
    """The performance lines `profile` asks for, in report order (see the module docstring)."""
    ref, perf = _reference(profile), Category.PERFORMANCE
    checks: list[Check] = []
    for metric_key, q in (("ttft", 50), ("ttft", 95), ("ttft", 99), ("tpot", 50), ("tpot", 99), ("e2e", 99)):
        limit = getattr(profile, f"{metric_key}_p{q}_ms")
        if limit is None:
            continue
        metric = METRICS[metric_key]
        checks.append(
            Check(
                f"performance.{metric_key}_p{q}",
                perf,
                f"{metric.label} p{q} within {limit:g} ms",
                _percentile_fn(metric, q, limit),
                ref,
                metric.remediation,
            )
        )
    if profile.min_output_tok_s_per_stream is not None:
        rate = profile.min_output_tok_s_per_stream
        checks.append(
            Check(
                "performance.output_tok_s_per_stream",
                perf,
                f"Median per-stream output rate at least {rate:g} tok/s",
                _stream_rate_fn(rate),
                ref,
                METRICS["tpot"].remediation,
            )
        )
    checks.append(
        Check(
            "performance.error_rate",
            perf,
            f"Error rate at most {profile.max_error_rate:.2%}",
            _error_rate_fn(profile.max_error_rate),
            ref,
            "Read the failures by kind in the benchmark: 429/503 mean the server sheds load (add capacity or lower the "
            "rate), timeouts mean queueing, 5xx mean server faults.",
        )
    )
    slo = goodput_slo(profile)
    if profile.min_goodput_fraction is not None and slo is not None:
        checks.append(
            Check(
                "performance.goodput",
                perf,
                f"At least {profile.min_goodput_fraction:.0%} of requests within every limit",
                _goodput_fn(slo, profile.min_goodput_fraction),
                ref,
                "Fix the latency lines above that fail or warn.",
            )
        )
    checks.append(
        Check(
            "performance.capacity",
            perf,
            "The declared request rate is met within the SLO",
            _capacity_fn(profile),
            ref,
            "Add replicas or a faster configuration (see the plan) until the sweep's best rate reaches the target.",
        )
    )
    return checks
