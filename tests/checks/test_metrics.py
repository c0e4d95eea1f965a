"""Metric definitions on hand-computed records: no server, no clock (DESIGN.md "Metric definitions")."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import TypeAdapter, ValidationError

from checks.load.metrics import PERCENTILES, Slo, summarize
from reports.records import ERROR_EXCERPT_CHARS, ErrorKind, RequestRecord, TokenSource, excerpt
from reports.stats import bootstrap_ci, percentile
from reports.summary import BenchmarkSummary, ErrorSample

RECORD = TypeAdapter(RequestRecord)  # how a saved result reads and writes its records

LATENCY_KEYS = [f"{stat}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for stat in ("mean", "median", "std")]
LATENCY_KEYS += [f"p{q}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for q in PERCENTILES]
CI_KEYS = [f"p{q}_{m}_ms_ci95" for m in ("ttft", "tpot") for q in (50, 99)]


def ok(request_id: int = 0, send: float = 0.0, chunks: tuple[float, ...] = (0.5,), **kw: object) -> RequestRecord:
    """A successful record: one token per chunk, ends on its last chunk, unless overridden."""
    fields: dict[str, object] = {
        "request_id": request_id,
        "scheduled_s": None,
        "ready_s": send,
        "send_s": send,
        "first_token_s": chunks[0] if chunks else None,
        "chunk_times_s": list(chunks),
        "chunk_tokens": [1] * len(chunks),
        "end_s": chunks[-1] if chunks else None,
        "input_tokens": 10,
        "output_tokens": len(chunks),
        "token_source": TokenSource.USAGE,
        "ok": True,
        "http_status": 200,
        "error_kind": None,
        "error_excerpt": None,
    }
    fields.update(kw)
    return RequestRecord(**fields)  # type: ignore[arg-type]


def failed(
    request_id: int, kind: ErrorKind, send: float = 0.0, status: int | None = None, **kw: object
) -> RequestRecord:
    """A failed record that ended quickly and streamed nothing."""
    fields: dict[str, object] = {
        "chunks": (),
        "ok": False,
        "error_kind": kind,
        "http_status": status,
        "end_s": send + 0.01,
        "output_tokens": None,
        "token_source": None,
        "error_excerpt": f"{kind} body",
    }
    fields.update(kw)
    return ok(request_id, send, **fields)  # type: ignore[arg-type]


# --- per-record arithmetic -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("send", "chunks", "tokens", "end", "output_tokens", "ttft", "e2e", "tpot", "itl"),
    [
        (1.0, [1.5, 1.75, 2.0], [1, 1, 1], 2.0, 3, 0.5, 1.0, 0.25, [0.25, 0.25]),
        (1.0, [1.5], [1], 1.5, 1, 0.5, 0.5, None, []),  # one token: no TPOT, no ITL
        (0.0, [0.25, 1.25], [1, 4], 1.5, 5, 0.25, 1.5, 1.25 / 4, [1.0]),  # multi-token chunk; usage chunk at 1.5
        (2.0, [2.5, 3.0], [1, 1], 3.0, None, 0.5, 1.0, None, [0.5]),  # unknown token count: no TPOT
        (2.0, [], [], None, None, None, None, None, []),  # nothing arrived
    ],
)
def test_record_latencies(send, chunks, tokens, end, output_tokens, ttft, e2e, tpot, itl) -> None:
    r = ok(send=send, chunks=tuple(chunks), chunk_tokens=tokens, end_s=end, output_tokens=output_tokens)
    assert r.ttft_s == ttft
    assert r.e2e_s == e2e
    assert r.tpot_s == (None if tpot is None else pytest.approx(tpot))
    assert r.itl_s == pytest.approx(itl)


@pytest.mark.parametrize(
    ("send", "chunks"),
    [(0.0, (0.3, 0.7, 1.1, 1.9)), (5.0, (5.01, 5.02, 5.5)), (1.5, (2.0, 2.0, 2.0, 3.25)), (0.1, (0.2, 0.3))],
)
def test_e2e_minus_ttft_is_sum_of_itl_when_last_chunk_ends_the_stream(send, chunks) -> None:
    r = ok(send=send, chunks=chunks)
    assert r.e2e_s - r.ttft_s == pytest.approx(sum(r.itl_s))
    assert len(r.itl_s) == len(chunks) - 1


@pytest.mark.parametrize(
    ("scheduled", "ready", "send", "queue", "lag"),
    [(None, 1.0, 1.5, 0.5, None), (2.0, 2.25, 2.25, 0.0, 0.25), (3.0, 3.0, 4.0, 1.0, 0.0)],
)
def test_queue_and_schedule_lag(scheduled, ready, send, queue, lag) -> None:
    r = ok(send=send, chunks=(send + 1,), scheduled_s=scheduled, ready_s=ready)
    assert r.queue_s == queue
    assert r.schedule_lag_s == lag


# --- record validation and JSON round trip -----------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"chunk_tokens": [1, 1]}, "chunk_tokens has 2"),
        ({"first_token_s": 0.4}, "must equal the first chunk time"),
        ({"error_kind": ErrorKind.TIMEOUT}, "ok=True but error_kind"),
        ({"ok": False}, "needs an error_kind"),
        ({"error_excerpt": "x" * (ERROR_EXCERPT_CHARS + 1)}, "at most 200"),
    ],
)
def test_record_rejects_inconsistent_fields(overrides, match) -> None:
    with pytest.raises(ValueError, match=match):
        ok(**overrides)


def test_excerpt_collapses_whitespace_and_fits_a_record() -> None:
    assert excerpt("  internal\n\n  error  ") == "internal error"
    long = excerpt("y" * 1000)
    assert len(long) == ERROR_EXCERPT_CHARS
    failed(1, ErrorKind.HTTP, status=500, error_excerpt=long)  # accepted


@pytest.mark.parametrize(
    "record",
    [
        ok(3, send=1.0, chunks=(1.25, 1.5), chunk_tokens=[2, 3], output_tokens=5, scheduled_s=0.5, ready_s=0.75),
        ok(4, chunks=(0.5,), token_source=TokenSource.CHUNKS, warmup=True, output_chars=12),
        failed(5, ErrorKind.HTTP, status=503, error_excerpt="overloaded"),
        failed(6, ErrorKind.STREAM_ERROR, status=200, input_tokens=None),
    ],
)
def test_record_round_trips_through_json(record) -> None:
    data = json.loads(RECORD.dump_json(record))
    assert data["error_kind"] is None or isinstance(data["error_kind"], str)
    assert "ttft_s" not in data  # derived properties are recomputed, not stored
    back = RECORD.validate_python(data)
    assert back == record
    assert type(back.token_source) is type(record.token_source)
    assert type(back.error_kind) is type(record.error_kind)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.update(latency_ms=3), "latency_ms\n  Unexpected keyword argument"),
        (lambda d: d.pop("send_s"), "send_s\n  Field required"),
        (lambda d: d.update(error_kind="timeout", ok=False, token_source="guess"), "token_source\n  Input should be"),
        (lambda d: d.update(chunk_tokens=[]), "chunk_times_s has 1 entries but chunk_tokens has 0"),  # __post_init__
    ],
)
def test_record_validation_rejects_bad_input(change, match) -> None:
    data = json.loads(RECORD.dump_json(ok()))
    change(data)
    with pytest.raises(ValidationError, match=match):
        RECORD.validate_python(data)


# --- percentiles and bootstrap ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1, 2, 3, 4], 50, 2.5),
        ([1, 2, 3, 4], 90, 3.7),  # rank 0.9 * 3 = 2.7: 3 + 0.7 * (4 - 3)
        ([4, 1, 3, 2], 0, 1.0),
        ([4, 1, 3, 2], 100, 4.0),
        (list(range(1, 11)), 95, 9.55),  # rank 8.55
        (list(range(1, 11)), 99, 9.91),  # rank 8.91
        ([10.0], 99, 10.0),
        ([], 50, None),
    ],
)
def test_percentile_interpolates_linearly(values, q, expected) -> None:
    assert percentile(values, q) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_rejects_q_outside_0_to_100(q) -> None:
    with pytest.raises(ValueError, match="within 0..100"):
        percentile([1.0], q)


SKEWED = [10.0 + (i % 7) * 3 + (i % 13) ** 2 / 4 for i in range(200)]


@pytest.mark.parametrize("q", [50, 90, 99])
def test_bootstrap_ci_contains_the_estimate_and_repeats_with_a_seed(q) -> None:
    low, high = bootstrap_ci(SKEWED, q, seed=7)
    assert low <= percentile(SKEWED, q) <= high
    assert low < high
    assert bootstrap_ci(SKEWED, q, seed=7) == (low, high)
    assert bootstrap_ci(SKEWED, q, seed=8) != (low, high)


@pytest.mark.parametrize(("values", "expected"), [([], None), ([42.0], (42.0, 42.0)), ([5.0, 5.0, 5.0], (5.0, 5.0))])
def test_bootstrap_ci_degenerate_inputs(values, expected) -> None:
    assert bootstrap_ci(values, 99) == expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_resamples": 0}, "n_resamples"), ({"confidence": 1.0}, "confidence"), ({"q": 101}, "within 0..100")],
)
def test_bootstrap_ci_rejects_bad_arguments(kwargs, match) -> None:
    args = {"values": [1.0, 2.0], "q": 50} | kwargs
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(**args)


# --- SLO and goodput -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slo", "record", "met"),
    [
        (Slo(ttft_ms=500), ok(chunks=(0.5, 1.0)), True),  # exactly at the limit
        (Slo(ttft_ms=499), ok(chunks=(0.5, 1.0)), False),
        (Slo(tpot_ms=250), ok(chunks=(0.25, 0.5, 0.75)), True),
        (Slo(tpot_ms=200), ok(chunks=(0.25, 0.5, 0.75)), False),
        (Slo(e2e_ms=700), ok(chunks=(0.25, 0.5, 0.75)), False),
        (Slo(tpot_ms=1), ok(chunks=(0.5,)), True),  # one token: no TPOT to exceed
        (Slo(tpot_ms=1000), ok(chunks=(0.5, 0.6), output_tokens=None), False),  # unknown count fails closed
        (Slo(ttft_ms=1000), ok(chunks=(0.5,), first_token_s=None, chunk_times_s=[], chunk_tokens=[]), False),
        (Slo(), ok(), True),
        (Slo(ttft_ms=10_000), failed(1, ErrorKind.TIMEOUT), False),
    ],
)
def test_slo_met_by(slo, record, met) -> None:
    assert slo.met_by(record) is met


@pytest.mark.parametrize("bad", [0, -5, math.nan, math.inf])
def test_slo_rejects_non_positive_limits(bad) -> None:
    with pytest.raises(ValueError, match="tpot_ms must be a positive number"):
        Slo(tpot_ms=bad)


def test_goodput_counts_requests_that_met_every_limit() -> None:
    records = [
        ok(0, send=0.0, chunks=(0.1, 0.2, 0.3)),
        ok(1, send=0.5, chunks=(0.6, 0.7, 0.8)),
        ok(2, send=1.0, chunks=(1.9, 1.95, 2.0)),  # TTFT 900 ms: misses
        ok(3, send=1.5, chunks=(1.6, 1.7, 1.8)),
        failed(4, ErrorKind.CONNECTION, send=1.0),
    ]
    summary = summarize(records, Slo(ttft_ms=200, tpot_ms=150))
    assert summary.duration_s == 2.0
    assert summary.request_goodput == pytest.approx(3 / 2.0)
    assert summary.request_throughput == pytest.approx(4 / 2.0)
    assert summarize(records).request_goodput is None


# --- summaries -------------------------------------------------------------------------------------


def test_summary_throughput_and_latency_by_hand() -> None:
    records = [
        ok(0, send=0.0, chunks=(0.5, 1.0, 1.5), input_tokens=20),  # ttft 500, tpot 500, e2e 1500
        ok(1, send=1.0, chunks=(1.25, 1.5), chunk_tokens=[1, 3], output_tokens=4, end_s=2.0),  # 250, 250, 1000
    ]
    s = summarize(records)
    assert (s.completed, s.failed, s.total_input_tokens, s.total_output_tokens) == (2, 0, 30, 7)
    assert s.duration_s == 2.0
    assert (s.request_throughput, s.output_throughput, s.total_token_throughput) == (1.0, 3.5, 18.5)
    assert (s.mean_ttft_ms, s.median_ttft_ms, s.std_ttft_ms, s.p99_ttft_ms) == (375, 375, 125, pytest.approx(497.5))
    assert (s.mean_tpot_ms, s.p90_tpot_ms) == (375, pytest.approx(475))
    assert (s.mean_itl_ms, s.p50_itl_ms, s.p99_itl_ms) == (pytest.approx(1250 / 3), 500, pytest.approx(500))
    assert (s.mean_e2el_ms, s.p50_e2el_ms) == (1250, 1250)
    assert s.token_sources == {"usage": 2}
    assert s.mean_queue_ms == 0.0
    assert (s.max_schedule_lag_ms, s.p99_schedule_lag_ms) == (None, None)


def test_failures_counted_by_kind_and_kept_out_of_latency() -> None:
    good = [ok(i, send=float(i), chunks=(i + 0.5, i + 1.0)) for i in range(3)]
    bad = [
        failed(10, ErrorKind.HTTP, send=0.1, status=500, error_excerpt="internal error"),
        failed(11, ErrorKind.HTTP, send=0.2, status=500),
        failed(12, ErrorKind.HTTP, send=0.3, status=429),
        failed(13, ErrorKind.TIMEOUT, send=0.4, end_s=None),
        failed(14, ErrorKind.STREAM_ERROR, send=0.5, status=200, chunks=(0.55, 0.6)),  # streamed, then an error event
        failed(15, ErrorKind.MALFORMED_STREAM, send=0.6),
        failed(16, ErrorKind.HTTP, send=0.05),  # no status: plain "http"
    ]
    s = summarize(bad[3:] + good + bad[:3])
    assert (s.completed, s.failed) == (3, 7)
    assert s.errors_by_kind == {
        "http": 1,
        "http_429": 1,
        "http_500": 2,
        "malformed_stream": 1,
        "stream_error": 1,
        "timeout": 1,
    }
    assert s.first_errors[:2] == [
        ErrorSample(request_id=16, kind="http", excerpt="http body"),
        ErrorSample(request_id=10, kind="http_500", excerpt="internal error"),
    ]
    assert [e.request_id for e in s.first_errors] == [16, 10, 11, 12, 13]
    assert (s.mean_ttft_ms, s.p99_ttft_ms, s.mean_e2el_ms, s.mean_itl_ms, s.p99_itl_ms) == (500, 500, 1000, 500, 500)
    assert s.total_output_tokens == 6
    assert "7 of 10 requests failed (http: 1, http_429: 1, http_500: 2, malformed_stream: 1, " in s.warnings[-1]


def test_warmup_records_are_excluded() -> None:
    warm = [ok(i, send=-5.0 + i, chunks=(-2.0 + i,), warmup=True, output_tokens=1) for i in range(2)]
    warm.append(failed(2, ErrorKind.TIMEOUT, send=-1.0, warmup=True))
    measured = [ok(3, send=0.0, chunks=(0.5, 1.0))]
    s, alone = summarize(warm + measured), summarize(measured)
    assert s == alone
    assert (s.completed, s.failed, s.duration_s, s.p99_ttft_ms) == (1, 0, 1.0, 500)


@pytest.mark.parametrize("records", [[], [ok(warmup=True), failed(1, ErrorKind.TIMEOUT, warmup=True)]])
def test_nothing_measured_gives_none_not_zero(records) -> None:
    d = summarize(records, Slo(ttft_ms=100)).model_dump()
    assert (d["completed"], d["failed"]) == (0, 0)
    measured = [
        "duration_s",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "request_goodput",
        "peak_output_throughput",
        "mean_queue_ms",
        *LATENCY_KEYS,
        *CI_KEYS,
    ]
    assert {k: d[k] for k in measured} == dict.fromkeys(measured)
    assert d["warnings"][:2] == ["no measured requests (none ran, or all were warm-up)", "no successful requests"]


def test_all_failed_has_no_latency_but_a_measured_window() -> None:
    s = summarize([failed(0, ErrorKind.HTTP, status=503), failed(1, ErrorKind.HTTP, send=0.5, status=503)])
    assert all(getattr(s, k) is None for k in LATENCY_KEYS + CI_KEYS)
    assert (s.duration_s, s.request_throughput, s.request_goodput) == (pytest.approx(0.51), 0.0, None)
    assert s.errors_by_kind == {"http_503": 2}
    assert "no successful requests" in s.warnings


@pytest.mark.parametrize(
    ("chunks_by_request", "tokens_by_request", "expected"),
    [
        ([(0.5, 1.5, 2.5)], [(1, 1, 1)], 1.0),
        ([(0.1, 0.9), (0.2, 0.95), (1.0, 1.5)], [(2, 3), (4, 1), (7, 8)], 15.0),  # [0,1): 10, [1,2): 15
        ([(0.1, 0.5, 0.99), (1.0,)], [(1, 1, 1), (2,)], 3.0),  # 1.0 opens the second window
        ([(2.2, 2.3, 2.4)], [(5, 5, 5)], 15.0),  # windows aligned to the first send, not the first chunk
    ],
)
def test_peak_output_throughput_uses_1s_windows_from_first_send(chunks_by_request, tokens_by_request, expected):
    records = [
        ok(i, send=0.0, chunks=c, chunk_tokens=list(t), output_tokens=sum(t))
        for i, (c, t) in enumerate(zip(chunks_by_request, tokens_by_request, strict=True))
    ]
    assert summarize(records).peak_output_throughput == expected


def test_few_samples_warn_and_enough_do_not() -> None:
    few = summarize([ok(i, send=float(i), chunks=(i + 0.5,)) for i in range(37)])
    assert "p99 TTFT rests on 37 requests (fewer than 100)" in few.warnings
    assert "TPOT not measurable: no successful request has 2 or more counted output tokens" in few.warnings
    enough = summarize([ok(i, send=float(i), chunks=(i + 0.5, i + 0.75)) for i in range(100)])
    assert not [w for w in enough.warnings if "rests on" in w]


def test_a_median_its_requests_cannot_pin_is_flagged() -> None:
    """Two groups of requests (8 and 11 ms a token, as a closed loop's outputs with and without a partner's
    prompt pass): the median sits between them and its interval spans both; one group alone pins it."""
    split = [ok(i, send=float(i), chunks=(i + 0.1, i + 0.1 + (0.008 if i % 2 else 0.011))) for i in range(40)]
    flagged = [w for w in summarize(split).warnings if w.startswith("median TPOT")]
    assert len(flagged) == 1 and "(95% interval over its 40 requests)" in flagged[0]
    steady = [ok(i, send=float(i), chunks=(i + 0.1, i + 0.11)) for i in range(40)]
    assert not [w for w in summarize(steady).warnings if w.startswith("median")]


def test_token_counts_fall_back_and_say_so() -> None:
    records = [
        ok(0, chunks=(0.5, 0.6), token_source=TokenSource.CHUNKS),
        ok(1, chunks=(0.5,), token_source=TokenSource.TOKENIZER, input_tokens=None),
        ok(2, chunks=(0.7,)),
    ]
    s = summarize(records)
    assert s.token_sources == {"chunks": 1, "tokenizer": 1, "usage": 1}
    assert (s.total_input_tokens, s.total_token_throughput, s.total_output_tokens) == (None, None, 4)
    assert "output tokens of 1 request(s) counted one per chunk (no usage, no tokenizer)" in s.warnings
    assert any(w.startswith("input_tokens unknown for 1 successful request") for w in s.warnings)


def test_schedule_lag_and_queue_time() -> None:
    records = [
        ok(i, send=ready + queue, scheduled_s=sched, ready_s=ready, chunks=(ready + queue + 0.5,))
        for i, (sched, ready, queue) in enumerate([(0.0, 0.0, 0.0), (0.25, 0.5, 0.25), (0.5, 0.5, 0.5)])
    ]
    s = summarize(records)
    assert s.max_schedule_lag_ms == 250
    assert s.p99_schedule_lag_ms == pytest.approx(245)  # [0, 0, 250] at rank 1.98
    assert s.mean_queue_ms == 250


def test_summary_cis_match_bootstrap_and_round_trip_through_json() -> None:
    records = [ok(i, send=float(i), chunks=(i + 0.1 + (i % 5) / 10, i + 0.9)) for i in range(50)]
    s = summarize(records)
    ttft_ms = [r.ttft_s * 1000 for r in records]
    assert s.p99_ttft_ms_ci95 == bootstrap_ci(ttft_ms, 99)
    assert s.p50_ttft_ms_ci95[0] <= s.p50_ttft_ms <= s.p50_ttft_ms_ci95[1]
    d = json.loads(s.model_dump_json())
    assert BenchmarkSummary.model_validate(d) == s  # intervals come back as tuples, errors as ErrorSamples
    assert list(d) == list(BenchmarkSummary.model_fields)
    for key in (
        "completed",
        "failed",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "request_goodput",
        "mean_ttft_ms",
        "median_ttft_ms",
        "p99_ttft_ms",
        "mean_tpot_ms",
        "mean_itl_ms",
        "mean_e2el_ms",
        "p99_itl_ms",
    ):
        assert key in d
