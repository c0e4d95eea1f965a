"""Performance checks on real records: the interval rule, the INVALID rule, capacity, error rate, goodput."""

from __future__ import annotations

import pytest
from readiness_helpers import benchmark_doc, context, failure, record, run_check, run_doc, spread

from checks.load.metrics import Slo, summarize
from checks.readiness.check import Declared
from checks.readiness.measured import choose_step
from checks.readiness.performance import judge_percentile, performance_checks, wilson_interval
from checks.readiness.slo import goodput_slo, load_profile
from reports.check_result import CheckStatus
from reports.records import ErrorKind
from reports.slo_profile import SloProfile
from reports.stats import min_samples

PASS, WARN, FAIL, ERROR, SKIP = (
    CheckStatus.PASS,
    CheckStatus.WARN,
    CheckStatus.FAIL,
    CheckStatus.ERROR,
    CheckStatus.SKIP,
)


def profile(**limits: float) -> SloProfile:
    return SloProfile(name="test", source="written for this test", **limits)


def check_named(p: SloProfile, check_id: str):
    return next(c for c in performance_checks(p) if c.id == check_id)


def ttft_doc(ttfts_ms: list[float], **kw: object) -> dict:
    return benchmark_doc([run_doc([record(i, t) for i, t in enumerate(ttfts_ms)], **kw)])


# --- the interval rule, as a table ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttfts_ms", "limit_field", "limit", "status"),
    [
        (spread(200, 80, 120), "ttft_p95_ms", 500, PASS),  # far inside
        (spread(200, 800, 1200), "ttft_p95_ms", 500, FAIL),  # far outside
        (spread(200, 0, 1000), "ttft_p50_ms", 500, WARN),  # the limit sits on the median
        (spread(30, 80, 120), "ttft_p99_ms", 500, WARN),  # inside, but 30 values cannot show a p99
        (spread(150, 80, 120), "ttft_p99_ms", 500, PASS),  # enough values for a p99
        (spread(30, 800, 1200), "ttft_p99_ms", 500, FAIL),  # few values, but already beyond: FAIL stands
        ([100.0] * 199 + [5000.0], "ttft_p99_ms", 500, WARN),  # one stall: the p99 interval straddles the limit
    ],
)
def test_percentile_lines_follow_the_interval(ttfts_ms, limit_field, limit, status) -> None:
    p = profile(**{limit_field: limit})
    q = limit_field.split("_")[1]
    result = run_check(check_named(p, f"performance.ttft_{q}"), context(ttft_doc(ttfts_ms)))
    assert result.status == status, result.message
    assert result.threshold == limit
    assert result.unit == "ms"
    assert f"{len(ttfts_ms)} values" in result.evidence[1]


@pytest.mark.parametrize(
    ("values", "q", "limit", "upper", "status"),
    [
        (spread(100, 10, 20), 50, 30, True, PASS),
        (spread(100, 10, 20), 50, 5, True, FAIL),
        (spread(100, 10, 20), 50, 15, True, WARN),
        (spread(100, 10, 20), 50, 5, False, PASS),  # a minimum (tok/s): the whole interval above it
        (spread(100, 10, 20), 50, 30, False, FAIL),
        (spread(100, 10, 20), 50, 15, False, WARN),
    ],
)
def test_judge_percentile_table(values, q, limit, upper, status) -> None:
    j = judge_percentile(values, q, limit, upper=upper)
    assert j is not None and j.status == status
    assert j.interval[0] <= j.value <= j.interval[1]


def test_judge_percentile_without_values_is_none() -> None:
    assert judge_percentile([], 99, 100) is None


@pytest.mark.parametrize(("q", "need"), [(50, 2), (95, 20), (99, 100), (99.9, 1000)])
def test_min_samples(q, need) -> None:
    assert min_samples(q) == need


def test_intervals_match_the_summary() -> None:
    """Same function, same seed: the p50 and p99 intervals a check shows are the summary's."""
    records = [record(i, t, tpot_ms=10 + i % 7) for i, t in enumerate(spread(120, 50, 400))]
    summary = summarize(records)
    doc = benchmark_doc([run_doc(records)])
    for check_id, key in (("performance.ttft_p99", "p99_ttft_ms_ci95"), ("performance.tpot_p50", "p50_tpot_ms_ci95")):
        p = profile(ttft_p99_ms=1000, tpot_p50_ms=100)
        result = run_check(check_named(p, check_id), context(doc))
        low, high = getattr(summary, key)
        assert f"{low:.4g}-{high:.4g} ms" in result.evidence[0]


# --- fail closed ------------------------------------------------------------------------------------


def all_lines(p: SloProfile) -> list[str]:
    return [c.id for c in performance_checks(p)]


FULL = dict(
    ttft_p50_ms=200,
    ttft_p95_ms=400,
    ttft_p99_ms=500,
    tpot_p50_ms=30,
    tpot_p99_ms=50,
    e2e_p99_ms=5000,
    min_output_tok_s_per_stream=10,
    min_goodput_fraction=0.9,
)


def test_every_line_is_listed_for_a_full_profile() -> None:
    assert all_lines(profile(**FULL)) == [
        "performance.ttft_p50",
        "performance.ttft_p95",
        "performance.ttft_p99",
        "performance.tpot_p50",
        "performance.tpot_p99",
        "performance.e2e_p99",
        "performance.output_tok_s_per_stream",
        "performance.error_rate",
        "performance.goodput",
        "performance.capacity",
    ]


def test_a_limit_not_set_makes_no_line() -> None:
    assert all_lines(profile(e2e_p99_ms=60000)) == [
        "performance.e2e_p99",
        "performance.error_rate",
        "performance.capacity",
    ]


def test_an_invalid_run_makes_every_line_error_never_pass() -> None:
    """Records that would pass every limit, from a run whose client self-check failed."""
    records = [record(i, 50, tpot_ms=5) for i in range(300)]
    doc = benchmark_doc([run_doc(records, valid=False)], sweep=True, sweep_max_rate=100.0)
    ctx = context(doc, Declared(target_qps=1.0))
    for check in performance_checks(profile(**FULL)):
        result = run_check(check, ctx)
        assert result.status == ERROR, check.id
        assert "INVALID" in result.message
        assert "schedule lag" in " ".join(result.evidence)


def test_no_benchmark_makes_every_line_error() -> None:
    for check in performance_checks(profile(**FULL)):
        result = run_check(check, context(None, Declared(target_qps=2.0)))
        assert result.status == ERROR, check.id
        assert result.message.startswith("no measurement")


def test_no_successful_request_is_error_not_pass() -> None:
    doc = benchmark_doc([run_doc([failure(i) for i in range(20)])])
    result = run_check(check_named(profile(ttft_p95_ms=500), "performance.ttft_p95"), context(doc))
    assert result.status == ERROR
    assert "not measurable" in result.message


# --- per-stream rate, error rate, goodput ------------------------------------------------------------


@pytest.mark.parametrize(("tpot_ms", "minimum", "status"), [(20, 25, PASS), (20, 100, FAIL), (50, 10, PASS)])
def test_per_stream_output_rate(tpot_ms, minimum, status) -> None:
    doc = benchmark_doc([run_doc([record(i, 100, tpot_ms=tpot_ms + (i % 3)) for i in range(60)])])
    result = run_check(
        check_named(profile(min_output_tok_s_per_stream=minimum), "performance.output_tok_s_per_stream"), context(doc)
    )
    assert result.status == status
    assert result.unit == "tok/s"
    assert result.value == pytest.approx(1000 / (tpot_ms + 1), rel=0.01)


@pytest.mark.parametrize(
    ("n_ok", "n_failed", "limit", "status"),
    [
        (200, 0, 0.01, PASS),
        (200, 2, 0.01, PASS),
        (200, 3, 0.01, FAIL),
        (49, 1, 0.01, FAIL),
        (10, 0, 0.0, PASS),
    ],
)
def test_error_rate(n_ok, n_failed, limit, status) -> None:
    records = [record(i, 100) for i in range(n_ok)] + [failure(n_ok + i) for i in range(n_failed)]
    result = run_check(
        check_named(profile(ttft_p95_ms=500, max_error_rate=limit), "performance.error_rate"),
        context(benchmark_doc([run_doc(records)])),
    )
    assert result.status == status
    assert result.value == pytest.approx(n_failed / (n_ok + n_failed))
    if n_failed:
        assert f"http_503: {n_failed}" in result.evidence


@pytest.mark.parametrize(("slow", "failed", "status"), [(0, 0, PASS), (5, 0, PASS), (11, 0, FAIL), (5, 6, FAIL)])
def test_goodput_counts_slow_and_failed_requests_as_missing(slow, failed, status) -> None:
    """100 measured requests, 90% must meet TTFT p99 <= 500 ms (the per-request limit)."""
    fast = 100 - slow - failed
    records = [record(i, 100) for i in range(fast)] + [record(fast + i, 900) for i in range(slow)]
    records += [failure(fast + slow + i) for i in range(failed)]
    p = profile(ttft_p99_ms=500, min_goodput_fraction=0.9)
    result = run_check(check_named(p, "performance.goodput"), context(benchmark_doc([run_doc(records)])))
    assert result.status == status
    assert result.value == pytest.approx(fast / 100)


def test_warmup_and_cancelled_requests_are_not_judged() -> None:
    records = [record(i, 100) for i in range(100)] + [record(100 + i, 9000, warmup=True) for i in range(5)]
    p = profile(ttft_p99_ms=500)
    result = run_check(check_named(p, "performance.ttft_p99"), context(benchmark_doc([run_doc(records)])))
    assert result.status == PASS
    assert "100 values" in result.evidence[1]


def test_wilson_interval_is_sane_at_the_edges() -> None:
    low, high = wilson_interval(0, 50)
    assert low == 0 and 0.05 < high < 0.09
    assert wilson_interval(50, 50)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


# --- capacity -----------------------------------------------------------------------------------------


CHAT = load_profile("chat")
FAST = [record(i, 100) for i in range(50)]


CHAT_SLO = goodput_slo(CHAT)


def sweep_doc(max_rate: float | None, slo: Slo | None = CHAT_SLO) -> dict:
    return benchmark_doc(
        [run_doc(FAST, "sync"), run_doc(FAST, "concurrency:32")], sweep=True, sweep_max_rate=max_rate, slo=slo
    )


@pytest.mark.parametrize(
    ("doc", "target", "status", "words"),
    [
        (sweep_doc(12.0), 10.0, PASS, "12 req/s"),
        (sweep_doc(8.0), 10.0, FAIL, "8 req/s"),
        (sweep_doc(None), 10.0, FAIL, "no sweep rate met"),
        (benchmark_doc([run_doc(FAST)]), 10.0, ERROR, "needs a sweep"),
        (sweep_doc(12.0, slo=None), 10.0, ERROR, "no SLO"),
        (sweep_doc(12.0, slo=goodput_slo(load_profile("batch"))), 10.0, ERROR, "rerun the sweep with this profile"),
        (sweep_doc(12.0), None, SKIP, "--target-qps"),
    ],
)
def test_capacity(doc, target, status, words) -> None:
    result = run_check(check_named(CHAT, "performance.capacity"), context(doc, Declared(target_qps=target)))
    assert result.status == status
    assert words in result.message


@pytest.mark.parametrize(
    ("rates", "target", "index"),
    [
        ([1.0, 9.0, 3.0, 5.0, 7.0], None, 1),  # no target: the heaviest load applied
        ([1.0, 9.0, 3.0, 5.0, 7.0], 4.0, 3),  # the lightest step that reached the target
        ([1.0, 9.0, 3.0, 5.0, 7.0], 20.0, 1),  # none reached it: the heaviest
        ([1.0, None, 3.0], None, 2),  # a step without a rate is never chosen over one with a rate
        ([None, None], 1.0, 1),
    ],
)
def test_choose_step(rates, target, index) -> None:
    assert choose_step(rates, target) == index


def test_a_sweep_is_judged_at_the_step_that_reached_the_target() -> None:
    slow_step = run_doc([record(i, 900, send_s=i * 0.1) for i in range(50)], "concurrency:32")
    fast_step = run_doc([record(i, 100, send_s=i * 0.5) for i in range(50)], "poisson:1.0")
    doc = benchmark_doc([fast_step, slow_step], sweep=True, sweep_max_rate=2.0, slo=goodput_slo(CHAT))
    result = run_check(check_named(CHAT, "performance.ttft_p95"), context(doc, Declared(target_qps=1.0)))
    assert result.status == PASS
    assert "sweep step 1 of 2 (poisson:1)" in result.evidence[1]
    result = run_check(check_named(CHAT, "performance.ttft_p95"), context(doc))
    assert result.status == FAIL  # no declared rate: judged at the heaviest step


def test_error_kinds_use_the_summary_keys() -> None:
    """An error event inside a 200 stream is a stream_error, not http_200."""
    broken = failure(1)
    broken.error_kind, broken.http_status = ErrorKind.STREAM_ERROR, 200
    records = [record(0, 100), broken, failure(2, status=429)]
    result = run_check(
        check_named(profile(ttft_p95_ms=500), "performance.error_rate"), context(benchmark_doc([run_doc(records)]))
    )
    assert result.status == FAIL
    assert {"stream_error: 1", "http_429: 1"} <= set(result.evidence)
