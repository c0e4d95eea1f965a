"""Comparing two runs, saying whether each difference is real.

Every figure is recomputed from the raw records of both documents, and each difference
gets a bootstrap 95% interval of its relative change (`reports.stats`): a metric is
"changed" only when that interval excludes 0, otherwise it is "no significant change"
with the interval shown. A changed metric that moved the wrong way by at least the
threshold is a regression, which `--fail-on-regression` turns into exit 1.

Throughput is a property of the run, not of a request, so its samples are the output
tokens that arrived in each of equal time bins of the measured window; resampling bins
keeps the run's own ups and downs in the interval.

Two runs that differ in what was asked (workload, load profile, model, SLO) or where
either is INVALID are marked not comparable, with the reasons; the figures are still
shown, since a person may want them, but a gate does not trust them. Differences in the
environment (versions, machine, weight format, threads) are listed, since they explain
results, without making the runs incomparable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from reports.benchmark_result import BenchmarkResult, RunDoc
from reports.check_result import CheckStatus
from reports.documents import SHORT_KIND, Document, Measured, measured
from reports.readiness_report import ReadinessReport
from reports.records import RequestRecord, is_measured
from reports.stats import RowStatistic, bootstrap_change_pct, min_samples, row_mean, row_percentile
from reports.throughput import chunks_of, rate_bins

THRESHOLD_PCT = 5.0  # a significant change smaller than this is reported, but is not a regression
THROUGHPUT_BINS = (10, 60)  # bins of the measured window: at least, at most
THROUGHPUT_BIN_S = 1.0  # preferred bin width within those bounds
RESAMPLES = 2000
SEED = 0


class DocRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    kind: Literal["readiness", "benchmark"]
    label: str | None
    started_at: str


class MetricDelta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    unit: str
    higher_is_better: bool
    a: float | None
    b: float | None
    delta_pct: float | None
    ci95_pct: tuple[float, float] | None = Field(description="bootstrap 95% interval of delta_pct")
    n: tuple[int, int] = Field(description="samples behind a and b (requests, or time bins for throughput)")
    blocks: tuple[int, int] = Field(
        (1, 1),
        description="resampling block length of a and b: the requests in flight "
        "together (or the time bins one request spans)",
    )
    enough_samples: bool = Field(
        True,
        description="both runs have a tail for this percentile (reports.stats."
        "min_samples: 100 values for p99, 20 for p95); if not, it "
        "is never 'changed'",
    )
    changed: bool = Field(description="the interval excludes 0")
    regression: bool = Field(description="changed the wrong way by at least the threshold")


class CheckChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    a: CheckStatus | None = Field(description="None: the check is new in b")
    b: CheckStatus | None = Field(description="None: the check disappeared in b")


class EnvDifference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    a: str | None
    b: str | None


class VerdictChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: str
    b: str


class Comparison(BaseModel):
    """`python -m reports compare A B`: the result, as printed, written with --json and rendered to Markdown."""

    model_config = ConfigDict(extra="forbid")
    KIND: ClassVar[str] = "preflight.comparison"
    SCHEMA_VERSION: ClassVar[int] = 1

    kind: Literal["preflight.comparison"] = "preflight.comparison"
    schema_version: int = 1
    a_doc: DocRef
    b_doc: DocRef
    threshold_pct: float
    comparable: bool
    reasons: list[str] = Field(description="why the runs are not comparable (empty when they are)")
    metrics: list[MetricDelta]
    checks: list[CheckChange] = Field(description="checks whose status changed, appeared or disappeared")
    verdict: VerdictChange | None = Field(description="readiness verdicts, when both are reports")
    environment: list[EnvDifference]

    def regressions(self) -> list[str]:
        """What `--fail-on-regression` fails on: significant regressions and checks that went PASS -> FAIL."""
        out = [f"{m.name} {m.delta_pct:+.1f}%" for m in self.metrics if m.regression and m.delta_pct is not None]
        out += [f"{c.id} PASS -> FAIL" for c in self.checks if (c.a, c.b) == (CheckStatus.PASS, CheckStatus.FAIL)]
        return out


# --- metrics from records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Metric:
    name: str
    unit: str
    higher_is_better: bool
    samples: Callable[[list[RequestRecord]], list[float]]  # in time order: neighbours are resampled together
    statistic: RowStatistic
    block: Callable[[list[RequestRecord]], int]  # how many neighbouring samples move together
    q: float | None = None  # the percentile, for a percentile metric: it needs min_samples(q) values per run


def in_flight(records: list[RequestRecord]) -> int:
    """Requests in flight on average over the run (Little's law: summed E2E over the window), at least 1.

    Requests served in the same batches share their latencies, so they are resampled as a block
    together (see `request_block`); a sync run (one at a time) gives 1."""
    done = [r for r in records if r.ok and r.e2e_s is not None]
    if not done:
        return 1
    window = max(r.send_s + (r.e2e_s or 0.0) for r in done) - min(r.send_s for r in done)
    return max(1, round(sum(r.e2e_s or 0.0 for r in done) / window)) if window > 0 else 1


def request_block(records: list[RequestRecord]) -> int:
    """The resampling block of per-request metrics: two rounds of requests in flight, so that a block holds a
    whole round of batch-mates wherever its random start falls (one round would mostly straddle two)."""
    return 2 * in_flight(records)


def bins_per_request(records: list[RequestRecord]) -> int:
    """Time bins one request spans on average, at least 1: the throughput bins it feeds move together."""
    width = throughput_bin_width(records)
    e2e = [r.e2e_s for r in records if r.ok and r.e2e_s is not None]
    return max(1, round(sum(e2e) / len(e2e) / width)) if width and e2e else 1


def _ms(values: Sequence[float | None]) -> list[float]:
    return [v * 1000 for v in values if v is not None]


def _ttft(records: list[RequestRecord]) -> list[float]:
    return _ms([r.ttft_s for r in records if r.ok])


def _tpot(records: list[RequestRecord]) -> list[float]:
    return _ms([r.tpot_s for r in records if r.ok])


def _e2e(records: list[RequestRecord]) -> list[float]:
    return _ms([r.e2e_s for r in records if r.ok])


def _bins(records: list[RequestRecord]) -> tuple[float, float, int] | None:
    """(start, width, count) of the equal time bins over the measured window (first send to last byte)."""
    starts = [r.send_s for r in records]
    ends = [r.end_s for r in records if r.end_s is not None]
    if not starts or not ends:
        return None
    t0, t1 = min(starts), max(ends)
    if t1 <= t0:
        return None
    low, high = THROUGHPUT_BINS
    bins = int(min(high, max(low, round((t1 - t0) / THROUGHPUT_BIN_S))))
    return t0, (t1 - t0) / bins, bins


def throughput_bin_width(records: list[RequestRecord]) -> float | None:
    found = _bins(records)
    return None if found is None else found[1]


def throughput_bins(records: list[RequestRecord]) -> list[float]:
    """Output tokens per second in each equal time bin of the measured window (first send to last byte)."""
    found = _bins(records)
    return [] if found is None else rate_bins(chunks_of(records), *found)


METRICS: tuple[_Metric, ...] = (
    *(_Metric(f"ttft_p{q}_ms", "ms", False, _ttft, row_percentile(q), request_block, q) for q in (50, 95, 99)),
    *(_Metric(f"tpot_p{q}_ms", "ms", False, _tpot, row_percentile(q), request_block, q) for q in (50, 95, 99)),
    _Metric("e2e_mean_ms", "ms", False, _e2e, row_mean, request_block),
    _Metric("output_throughput_tok_s", "tok/s", True, throughput_bins, row_mean, bins_per_request),
)


def _measured(run: RunDoc) -> list[RequestRecord]:
    """The measured records in the order they were sent, so a resampling block holds neighbours."""
    return sorted((r for r in run.records if is_measured(r)), key=lambda r: r.send_s)


def _point(values: list[float], statistic: RowStatistic) -> float | None:
    return float(statistic(np.asarray([values], dtype=float))[0]) if values else None


def compare_metric(
    metric: _Metric,
    a: list[RequestRecord],
    b: list[RequestRecord],
    name: str,
    threshold_pct: float = THRESHOLD_PCT,
    seed: int = SEED,
) -> MetricDelta:
    """One metric of two runs: both points, the relative change and its interval, and what it means."""
    xa, xb = metric.samples(a), metric.samples(b)
    pa, pb = _point(xa, metric.statistic), _point(xb, metric.statistic)
    delta = None if pa is None or pb is None or pa == 0 else 100.0 * (pb - pa) / pa
    blocks = (metric.block(a), metric.block(b))
    ci = bootstrap_change_pct(xa, xb, metric.statistic, n_resamples=RESAMPLES, seed=seed, blocks=blocks)
    enough = metric.q is None or min(len(xa), len(xb)) >= min_samples(metric.q)
    changed = enough and ci is not None and (ci[0] > 0 or ci[1] < 0)
    worse = delta is not None and (delta < 0 if metric.higher_is_better else delta > 0)
    regression = changed and worse and abs(delta or 0.0) >= threshold_pct
    return MetricDelta(
        name=name,
        unit=metric.unit,
        higher_is_better=metric.higher_is_better,
        a=pa,
        b=pb,
        delta_pct=delta,
        ci95_pct=ci,
        n=(len(xa), len(xb)),
        blocks=blocks,
        enough_samples=enough,
        changed=changed,
        regression=regression,
    )


# --- what the documents asked for, and where they ran -------------------------------------------------


def _benchmark(doc: Measured) -> BenchmarkResult | None:
    return doc.benchmark if isinstance(doc, ReadinessReport) else doc


def bundled_decode(result: BenchmarkResult) -> str | None:
    """How a bundled server decoded: what it said (newer results), else what the config asked for; None remote.

    Results from before compiled decode was the default keep `compile` in their config (off: eager).
    """
    if result.target.kind != "bundled":
        return None
    if result.target.decode is not None:
        return result.target.decode
    if "eager" in result.config:
        return "eager" if result.config["eager"] else "compiled"
    return "compiled" if result.config.get("compile") else "eager"


# Beyond the workload line (prompt source and lengths): settings that change what each request asks for.
WORKLOAD_KEYS = ("range_ratio", "shared_prefix_len", "temperature", "api")
ENVIRONMENT_KEYS = ("cpu_model", "physical_cores", "torch_version", "driver_version", "os")


def _not_comparable(a: Measured, b: Measured) -> list[str]:
    reasons: list[str] = []
    ba, bb = _benchmark(a), _benchmark(b)
    for side, bench in (("A", ba), ("B", bb)):
        if bench is None:
            reasons.append(f"{side} has no benchmark run: nothing measured to compare")
        elif not bench.valid:
            reasons.append(f"{side} is INVALID: the load generator did not keep up ({'; '.join(bench.warnings[:1])})")
    if ba is not None and bb is not None:
        if ba.workload != bb.workload:
            reasons.append(f"different workload: {ba.workload!r} vs {bb.workload!r}")
        for key in WORKLOAD_KEYS:
            if key in ba.config and key in bb.config and ba.config[key] != bb.config[key]:
                reasons.append(f"different {key}: {ba.config[key]!r} vs {bb.config[key]!r}")
        pa, pb = [r.profile for r in ba.runs], [r.profile for r in bb.runs]
        if pa != pb:
            reasons.append(f"different load profile: {', '.join(pa)} vs {', '.join(pb)}")
        if ba.endpoint.model != bb.endpoint.model:
            reasons.append(f"different model: {ba.endpoint.model} vs {bb.endpoint.model}")
        if ba.slo != bb.slo:
            reasons.append("different SLO in the benchmark config")
    if isinstance(a, ReadinessReport) and isinstance(b, ReadinessReport) and a.slo != b.slo:
        reasons.append(f"different SLO profile: {a.slo.name} vs {b.slo.name}")
    return reasons


def _environment(a: Measured, b: Measured) -> list[EnvDifference]:
    pairs: list[tuple[str, Any, Any]] = [("preflight version", a.tool.version, b.tool.version)]
    ba, bb = _benchmark(a), _benchmark(b)
    if ba is not None and bb is not None:
        pairs += [
            (f"client {k}", getattr(ba.client, k, None), getattr(bb.client, k, None))
            for k in ("host", "cpu_count", "python", "os")
        ]
        config_keys = ("threads", "device", "max_num_seqs", "weights")
        pairs += [(k, ba.config.get(k), bb.config.get(k)) for k in config_keys]
        pairs.append(("decode", bundled_decode(ba), bundled_decode(bb)))
        pairs.append(("weight format", getattr(ba.target, "quant", None), getattr(bb.target, "quant", None)))
        pairs.append(
            (
                "target",
                ba.target.base_url if ba.target.kind == "remote" else "bundled",
                bb.target.base_url if bb.target.kind == "remote" else "bundled",
            )
        )
    if isinstance(a, ReadinessReport) and isinstance(b, ReadinessReport):
        pairs += [(k, a.environment.get(k), b.environment.get(k)) for k in ENVIRONMENT_KEYS]
        gpus = [", ".join(str(g.get("name")) for g in doc.environment.get("gpus") or []) or None for doc in (a, b)]
        pairs.append(("gpus", gpus[0], gpus[1]))
    return [
        EnvDifference(name=n, a=None if x is None else str(x), b=None if y is None else str(y))
        for n, x, y in pairs
        if x != y
    ]


def _checks(a: Measured, b: Measured) -> tuple[list[CheckChange], VerdictChange | None]:
    if not (isinstance(a, ReadinessReport) and isinstance(b, ReadinessReport)):
        return [], None
    sa, sb = {c.id: c.status for c in a.checks}, {c.id: c.status for c in b.checks}
    ids = list(sa) + [i for i in sb if i not in sa]
    changes = [CheckChange(id=i, a=sa.get(i), b=sb.get(i)) for i in ids if sa.get(i) != sb.get(i)]
    return changes, VerdictChange(a=a.verdict.value, b=b.verdict.value)


def _ref(doc: Measured) -> DocRef:
    return DocRef(id=doc.id, kind=SHORT_KIND[doc.KIND], label=doc.label, started_at=doc.started_at.isoformat())


def paired_runs(a: Measured, b: Measured) -> list[tuple[RunDoc, RunDoc]]:
    """The runs of A and B measured under the same load profile, in A's order."""
    ba, bb = _benchmark(a), _benchmark(b)
    if ba is None or bb is None:
        return []
    by_profile = {r.profile: r for r in bb.runs}
    return [(r, by_profile[r.profile]) for r in ba.runs if r.profile in by_profile]


def compare(a: Document, b: Document, threshold_pct: float = THRESHOLD_PCT) -> Comparison:
    """A against B (B is the newer run, by convention): see the module docstring.

    DocumentError when either is an engine study (it has no records to compare)."""
    if not threshold_pct >= 0:
        raise ValueError(f"threshold_pct must be 0 or more, got {threshold_pct}")
    a, b = measured(a), measured(b)
    metrics: list[MetricDelta] = []
    pairs = paired_runs(a, b)
    for run_a, run_b in pairs:
        prefix = f"{run_a.profile} " if len(pairs) > 1 else ""
        ra, rb = _measured(run_a), _measured(run_b)
        metrics += [compare_metric(m, ra, rb, prefix + m.name, threshold_pct) for m in METRICS]
    checks, verdict = _checks(a, b)
    reasons = _not_comparable(a, b)
    return Comparison(
        a_doc=_ref(a),
        b_doc=_ref(b),
        threshold_pct=threshold_pct,
        comparable=not reasons,
        reasons=reasons,
        metrics=metrics,
        checks=checks,
        verdict=verdict,
        environment=_environment(a, b),
    )


def latency_samples(a: Measured, b: Measured) -> list[tuple[str, str, float]]:
    """(side, metric, ms) rows of TTFT and TPOT for the runs `compare` pairs: the overlaid distributions."""
    pairs = paired_runs(a, b)
    if not pairs:
        return []
    rows: list[tuple[str, str, float]] = []
    for side, run in zip(("A", "B"), pairs[0], strict=True):
        records = _measured(run)
        rows += [(side, "TTFT ms", v) for v in _ttft(records)] + [(side, "TPOT ms", v) for v in _tpot(records)]
    return rows
