"""run_load_sync against planted-fault servers: every request gets a record, runs end, cancel is prompt.

Small, fast runs (a few chunks, 10-20 ms apart). Time bounds are generous deadlines
that catch a hang or an overrun window, never a tight latency figure: what takes a
fraction of a second must end well within HANG_S even on a loaded 2-core machine.
"""

from __future__ import annotations

import threading
import time

import pytest
from fault_server import Behaviour, FaultServer, Script

from checks.load.endpoint import Endpoint
from checks.load.loadgen import Progress, RunLimits, RunResult, run_load_sync
from checks.load.metrics import summarize
from checks.load.profiles import LoadProfile
from checks.load.prompts import PromptRequest
from reports.records import ErrorKind, RequestRecord

PROMPT = PromptRequest("say three words", None, max_tokens=8, input_tokens=3, ignore_eos=True, source="test#0")
FAST = Script(chunks=4, chunk_delay_s=0.01)
TIMEOUT_S = 30.0  # a generous per-request deadline: a stuck request fails a test instead of hanging it
STALL_S = 120.0  # a stall far longer than any deadline a test sets: waiting it out is the bug
HANG_S = 30.0


def run(script: Script, profile: str, limits: RunLimits, timeout_s: float = TIMEOUT_S, **kwargs: object) -> RunResult:
    with FaultServer(script) as server:
        endpoint = Endpoint(server.base_url, "fault-model", request_timeout_s=timeout_s)
        return run_load_sync(endpoint, [PROMPT], LoadProfile.parse(profile), limits, **kwargs)


def max_overlap(records: list[RequestRecord]) -> int:
    """Most requests between send and last byte at one moment (an end counts before a send at the same time)."""
    edges = sorted([(r.send_s, 1) for r in records] + [(r.end_s, -1) for r in records])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def test_every_request_gets_a_record_and_failures_are_counted_by_kind() -> None:
    result = run(
        Script(Behaviour.HTTP_500_EVERY_K, every_k=3, chunks=4, chunk_delay_s=0.01),
        "concurrency:4",
        RunLimits(requests=12),
    )
    assert [r.request_id for r in result.records] == list(range(12))
    assert not result.cancelled and result.stopped_early is None
    assert max_overlap(result.records) <= 4
    assert all(r.queue_s >= 0 and r.scheduled_s is None for r in result.records)
    failed = [r for r in result.records if not r.ok]
    assert len(failed) == 4  # completion requests 3, 6, 9 and 12, whichever ids they carried
    assert all(r.error_kind is ErrorKind.HTTP and r.http_status == 500 for r in failed)
    summary = summarize(result.records)
    assert (summary.completed, summary.failed, summary.cancelled) == (8, 4, 0)
    assert summary.errors_by_kind == {"http_500": 4}
    assert summary.total_output_tokens == 8 * 4
    assert len(summary.first_errors) >= 1
    assert all("planted fault" in (e.excerpt or "") for e in summary.first_errors)


def test_server_death_ends_the_run_with_connection_failures() -> None:
    result = run(Script(Behaviour.DIE_AFTER_N, ok_requests=3, chunk_delay_s=0.01), "sync", RunLimits(requests=8))
    assert [r.request_id for r in result.records] == list(range(8))
    assert [r.ok for r in result.records] == [True] * 3 + [False] * 5
    assert all(r.error_kind is ErrorKind.CONNECTION for r in result.records[3:])
    summary = summarize(result.records)
    assert (summary.completed, summary.failed) == (3, 5)
    assert summary.errors_by_kind == {"connection": 5}


def test_server_death_under_concurrency_does_not_hang() -> None:
    result = run(
        Script(Behaviour.DIE_AFTER_N, ok_requests=2, chunk_delay_s=0.01), "concurrency:4", RunLimits(requests=12)
    )
    assert len(result.records) == 12
    assert sum(r.ok for r in result.records) <= 2
    assert all(r.ok or r.error_kind is ErrorKind.CONNECTION for r in result.records)
    assert summarize(result.records).errors_by_kind["connection"] >= 10


@pytest.mark.parametrize("profile", ["concurrency:3", "constant:20"])
def test_cancel_while_requests_stall(profile: str) -> None:
    cancel = threading.Event()
    timer = threading.Timer(0.3, cancel.set)
    started = time.perf_counter()
    timer.start()
    try:
        result = run(
            Script(Behaviour.STALL, stall_s=STALL_S),
            profile,
            RunLimits(requests=10),
            timeout_s=2 * HANG_S,
            cancel=cancel,
        )
    finally:
        timer.cancel()
    assert time.perf_counter() - started < HANG_S  # neither the stall nor the request timeout was waited out
    assert result.cancelled
    assert 1 <= len(result.records) < 10  # the stalled ones; nothing launched after the cancel
    assert all(r.error_kind is ErrorKind.CANCELLED and not r.ok for r in result.records)
    assert [r.request_id for r in result.records] == list(range(len(result.records)))
    # send_s is when each went on the wire, not the cancel time: the first went out at once, 0.3 s before it.
    assert all(r.send_s <= r.end_s for r in result.records)
    assert result.records[0].end_s - result.records[0].send_s > 0.2
    summary = summarize(result.records)
    assert (summary.completed, summary.failed, summary.cancelled) == (0, 0, len(result.records))


def test_cancel_before_the_run_sends_nothing() -> None:
    cancel = threading.Event()
    cancel.set()
    with FaultServer(FAST) as server:
        endpoint = Endpoint(server.base_url, "fault-model", request_timeout_s=TIMEOUT_S)
        result = run_load_sync(
            endpoint, [PROMPT], LoadProfile.parse("concurrency:2"), RunLimits(requests=5), cancel=cancel
        )
        assert server.requests == []
    assert result.cancelled and result.records == []


@pytest.mark.parametrize("profile", ["concurrency:2", "constant:50"])
def test_warmup_records_are_flagged_and_excluded(profile: str) -> None:
    result = run(FAST, profile, RunLimits(requests=5, warmup_requests=3))
    records = result.records
    assert [r.request_id for r in records] == list(range(8))
    assert [r.warmup for r in records] == [True] * 3 + [False] * 5
    assert all(r.ok for r in records)
    warm, measured = records[:3], records[3:]
    assert max(r.end_s for r in warm) <= min(r.send_s for r in measured)  # warm-up drains first
    summary = summarize(records)
    assert (summary.completed, summary.failed) == (5, 0)
    assert summary.total_output_tokens == 5 * 4


def test_constant_rate_follows_its_schedule() -> None:
    rate = 20.0
    result = run(FAST, f"constant:{rate:g}", RunLimits(requests=8))
    records = result.records
    assert len(records) == 8 and all(r.ok for r in records)
    first = records[0].scheduled_s
    assert first is not None
    for i, record in enumerate(records):
        assert record.scheduled_s == pytest.approx(first + i / rate, abs=1e-9)
        assert -1e-3 <= record.schedule_lag_s < 0.1
        assert record.queue_s >= 0
    check = result.self_check
    assert check.schedule_lag_p99_ms is not None and check.schedule_lag_max_ms is not None
    assert summarize(records).max_schedule_lag_ms is not None


@pytest.mark.parametrize(
    ("profile", "duration_s"), [("concurrency:2", 0.6), ("constant:10", 0.6), ("constant:0.01", 0.5)]
)
def test_duration_bound_run_ends_near_its_duration(profile: str, duration_s: float) -> None:
    """constant:0.01 has its second arrival at 100 s: the run must not sleep until then to find the window shut."""
    result = run(FAST, profile, RunLimits(duration_s=duration_s))
    assert duration_s <= result.wall_s < duration_s + HANG_S
    records = result.records
    assert records and all(r.ok for r in records)
    start = min(r.ready_s for r in records)
    assert all(r.ready_s - start < duration_s for r in records)  # nothing sent after the window shut


def test_progress_callback_sees_sane_numbers() -> None:
    seen: list[Progress] = []
    result = run(
        Script(chunks=4, chunk_delay_s=0.02),
        "concurrency:2",
        RunLimits(requests=12, warmup_requests=2),
        progress=seen.append,
    )
    assert len(result.records) == 14
    assert seen
    for p in seen:
        assert p.phase in ("warmup", "measure", "drain")
        assert p.total == 12
        assert 0 <= p.completed + p.failed <= 12
        assert 0 <= p.in_flight <= 2
        assert p.elapsed_s >= 0
        assert p.output_tokens == 4 * p.completed
    elapsed = [p.elapsed_s for p in seen if p.phase != "warmup"]
    assert elapsed == sorted(elapsed)
    last = seen[-1]
    assert (last.completed, last.failed, last.in_flight) == (12, 0, 0)
    assert last.output_tokens == 48


def test_a_request_that_raises_is_not_silently_dropped() -> None:
    """Chat messages cannot go to the completions API: the run raises instead of returning fewer records."""
    chat = PromptRequest(
        None,
        ({"role": "user", "content": "hi"},),
        max_tokens=8,
        input_tokens=None,
        ignore_eos=False,
        source="test#chat",
    )
    with FaultServer(FAST) as server:
        endpoint = Endpoint(server.base_url, "fault-model", api="completions", request_timeout_s=TIMEOUT_S)
        with pytest.raises(ValueError, match="chat messages, which cannot go to the completions API"):
            run_load_sync(endpoint, [PROMPT, chat], LoadProfile.parse("concurrency:2"), RunLimits(requests=6))


def test_a_deeply_nested_event_costs_one_record_not_the_run() -> None:
    """Issue 16, item 8: RecursionError from one answer escaped the client, the run re-raised it and kept nothing."""
    result = run(Script(Behaviour.DEEP_NESTING, depth=100_000), "concurrency:2", RunLimits(requests=4))
    assert [r.request_id for r in result.records] == list(range(4))
    assert all(r.error_kind is ErrorKind.MALFORMED_STREAM for r in result.records)
    assert summarize(result.records).errors_by_kind == {"malformed_stream": 4}
