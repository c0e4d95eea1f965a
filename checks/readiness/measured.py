"""The one place that reads the benchmark result (`ctx.benchmark`) for the readiness checks.

Performance and resource checks judge plain inputs (a list of `RequestRecord`, a
`valid` flag, the sweep's best rate, resource samples); this module pulls them out of
the result document, so a change in that document's shape (today the JSON-ready dict
`run_benchmark` returns, soon a typed model) touches only `measurement()` and its
helpers. Field access goes through `_get`, which reads a mapping key or an attribute
of the same name, so both shapes of the document read the same.

Which run is judged: a single run is itself. A sweep has one run per step at rising
load; the checks hold the endpoint to the SLO at the declared load, so they judge the
lightest step whose measured rate reached `--target-qps`. Without a declared rate, or
when no step reached it, they judge the step that carried the most load: fail closed,
never the flattering sync step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from checks.load.records import ErrorKind, RequestRecord
from checks.readiness.check import CheckContext


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
    resource_samples: list[Any] = field(default_factory=list)  # ResourceSample objects or their dicts
    measured_start_s: float | None = None  # run clock: the first measured send of the whole benchmark


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _record(raw: Any) -> RequestRecord:
    return raw if isinstance(raw, RequestRecord) else RequestRecord.from_dict(dict(raw))


def is_measured(record: RequestRecord) -> bool:
    """In the measured window: not warm-up, and not cancelled by a stop (those are neither timed nor failures)."""
    return not record.warmup and record.error_kind != ErrorKind.CANCELLED


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


def _slo_ms(slo: Any) -> dict[str, float | None] | None:
    if slo is None:
        return None
    return {metric: _get(slo, f"{metric}_ms") for metric in ("ttft", "tpot", "e2e")}


def measurement(ctx: CheckContext) -> Measurement | None:
    """The benchmark's figures as plain inputs; None when no benchmark ran or was handed over."""
    bench = ctx.benchmark
    if bench is None:
        return None
    runs = list(_get(bench, "runs") or [])
    if not runs:
        return None
    sweep = _get(bench, "sweep")
    if sweep is not None:
        rates = [_get(_get(run, "summary"), "request_throughput") for run in runs]
        index = choose_step(rates, ctx.declared.target_qps)
        label = f"sweep step {index + 1} of {len(runs)} ({_get(runs[index], 'profile')})"
    else:
        index, label = 0, str(_get(runs[0], "profile"))
    all_records = [[_record(r) for r in _get(run, "records") or []] for run in runs]
    reasons = [
        f"{_get(run, 'profile')}: {reason}"
        for run in runs
        if not _get(_get(run, "self_check"), "valid", False)
        for reason in (_get(_get(run, "self_check"), "reasons") or ["client self-check failed"])
    ]
    valid = bool(_get(bench, "valid", False)) and not reasons
    sends = [r.send_s for records in all_records for r in records if not r.warmup]
    resources = _get(bench, "resources")
    return Measurement(
        records=[r for r in all_records[index] if is_measured(r)],
        valid=valid,
        invalid_reasons=reasons or ([] if valid else ["the result is marked invalid"]),
        run_label=label,
        sweep_ran=sweep is not None,
        max_rate_meeting_slo=_get(sweep, "max_rate_meeting_slo") if sweep is not None else None,
        sweep_slo_ms=_slo_ms(_get(bench, "slo")),
        resource_samples=list(_get(resources, "samples") or []) if resources is not None else [],
        measured_start_s=min(sends, default=None),
    )
