"""Splitting one load over Ray workers, and putting their records back on one clock (no Ray needed here)."""

from __future__ import annotations

import pytest

from checks.load.distributed import DistributedError, merge_self_checks, shift_record, split_load
from checks.load.loadgen import RunLimits, SelfCheck
from checks.load.profiles import LoadProfile, arrival_offsets
from checks.load.prompts import PromptRequest
from reports.records import RequestRecord


def _prompts(n: int) -> list[PromptRequest]:
    return [PromptRequest(f"p{i}", None, 4, 2, True, f"synthetic#{i}") for i in range(n)]


def test_concurrency_and_requests_are_divided_with_the_remainder_first() -> None:
    shares = split_load(LoadProfile.parse("concurrency:5"), _prompts(12), RunLimits(requests=10, warmup_requests=2), 3)
    assert [s.profile.concurrency for s in shares] == [2, 2, 1]
    assert [s.limits.requests for s in shares] == [4, 3, 3]
    assert all(s.limits.warmup_requests == 0 for s in shares)  # the driver sends the warm-up
    assert [p.prompt for p in shares[0].requests] == ["p2", "p5", "p8", "p11"]  # measured prompts, dealt in turn
    with pytest.raises(DistributedError, match="cannot keep 3 workers busy"):
        split_load(LoadProfile.parse("concurrency:2"), _prompts(4), RunLimits(requests=4), 3)
    with pytest.raises(DistributedError, match="one worker"):
        split_load(LoadProfile.parse("sync"), _prompts(4), RunLimits(requests=4), 2)


def test_a_poisson_schedule_is_computed_once_and_dealt_out() -> None:
    """Together the workers' arrivals are exactly the single-process schedule, so the aggregate stays Poisson."""
    profile = LoadProfile.parse("poisson:8", max_concurrency=5)
    limits = RunLimits(requests=20, seed=3)
    shares = split_load(profile, _prompts(20), limits, 2)
    together = sorted(t for s in shares for t in (s.profile.offsets or ()))
    assert together == pytest.approx(arrival_offsets(profile, 20, 3))
    assert [s.profile.kind for s in shares] == ["trace", "trace"]
    assert [s.profile.max_concurrency for s in shares] == [3, 2]
    assert shares[1].profile.label == "trace:poisson:8 share 2/2"
    assert [p.prompt for p in shares[1].requests][:3] == ["p1", "p3", "p5"]


def _record(rid: int, send: float, ok: bool = True) -> RequestRecord:
    return RequestRecord(
        request_id=rid,
        scheduled_s=send - 0.01,
        ready_s=send,
        send_s=send,
        first_token_s=send + 0.1 if ok else None,
        chunk_times_s=[send + 0.1, send + 0.2] if ok else [],
        chunk_tokens=[1, 1] if ok else [],
        end_s=send + 0.2,
        input_tokens=2,
        output_tokens=2 if ok else None,
        token_source=None,
        ok=ok,
        http_status=200 if ok else None,
        error_kind=None if ok else "timeout",
        error_excerpt=None,
    )


def test_shift_moves_every_time_and_keeps_the_latencies() -> None:
    record = _record(4, 1.0)
    moved = shift_record(record, 10.5, 9)
    assert moved.request_id == 9 and moved.send_s == 11.5 and moved.scheduled_s == pytest.approx(11.49)
    assert moved.chunk_times_s == [11.6, 11.7] and moved.first_token_s == 11.6
    assert (moved.ttft_s, moved.e2e_s, moved.tpot_s) == pytest.approx((record.ttft_s, record.e2e_s, record.tpot_s))
    assert record.send_s == 1.0  # the original is untouched


def test_one_late_worker_makes_the_merged_run_invalid_and_is_named() -> None:
    late = SelfCheck(loop_lag_p99_ms=80.0, loop_lag_max_ms=120.0, valid=False, reasons=["the event loop woke late"])
    fine = SelfCheck(loop_lag_p99_ms=1.0, loop_lag_max_ms=2.0)
    merged = merge_self_checks({0: fine, 1: late}, [_record(0, 1.0)], LoadProfile.parse("poisson:2"))
    assert not merged.valid and merged.reasons == ["worker 2: the event loop woke late"]
    assert (merged.loop_lag_p99_ms, merged.loop_lag_max_ms) == (80.0, 120.0)
    assert merge_self_checks({0: fine}, [_record(0, 1.0)], LoadProfile.parse("poisson:2")).valid
