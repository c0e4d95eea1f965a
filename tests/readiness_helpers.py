"""Real records and real benchmark documents for the readiness tests: no server, no clock.

Run documents are built by `checks.load.benchmark.run_doc`, the function `run_benchmark`
uses, and wrapped by `tests.result_docs.result_of`, so the checks read exactly the typed
document a real run hands them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from checks.load.benchmark import run_doc as build_run_doc
from checks.load.endpoint import Endpoint
from checks.load.loadgen import RunResult, SelfCheck
from checks.load.metrics import Slo, summarize
from checks.load.profiles import LoadProfile
from checks.readiness.check import Check, CheckContext, Declared
from reports.benchmark_result import BenchmarkResult, RunDoc, SloDoc, SweepDoc
from reports.check_result import CheckResult, Exposure
from reports.records import ErrorKind, RequestRecord, TokenSource
from reports.resources import ResourceSample
from tests.result_docs import result_of


def record(
    i: int, ttft_ms: float, tpot_ms: float = 20.0, tokens: int = 11, send_s: float | None = None, warmup: bool = False
) -> RequestRecord:
    """A successful streamed request: first token after `ttft_ms`, then one token per `tpot_ms`."""
    send = i * 0.01 if send_s is None else send_s
    first = send + ttft_ms / 1000
    chunks = [first + k * tpot_ms / 1000 for k in range(tokens)]
    return RequestRecord(
        request_id=i,
        scheduled_s=None,
        ready_s=send,
        send_s=send,
        first_token_s=first,
        chunk_times_s=chunks,
        chunk_tokens=[1] * tokens,
        end_s=chunks[-1],
        input_tokens=100,
        output_tokens=tokens,
        token_source=TokenSource.USAGE,
        ok=True,
        http_status=200,
        error_kind=None,
        error_excerpt=None,
        warmup=warmup,
    )


def failure(i: int, status: int = 503) -> RequestRecord:
    """A request the server refused with `status` before streaming anything."""
    send = i * 0.01
    return RequestRecord(
        request_id=i,
        scheduled_s=None,
        ready_s=send,
        send_s=send,
        first_token_s=None,
        chunk_times_s=[],
        chunk_tokens=[],
        end_s=send + 0.005,
        input_tokens=100,
        output_tokens=None,
        token_source=None,
        ok=False,
        http_status=status,
        error_kind=ErrorKind.HTTP,
        error_excerpt=f"HTTP {status}",
    )


def spread(n: int, low_ms: float, high_ms: float) -> list[float]:
    """n values evenly from low to high: a known distribution whose percentiles are easy to place."""
    return [low_ms + (high_ms - low_ms) * k / max(1, n - 1) for k in range(n)]


def run_doc(
    records: Sequence[RequestRecord], profile: str = "concurrency:4", valid: bool = True, slo: Slo | None = None
) -> RunDoc:
    reasons = [] if valid else ["schedule lag p99 120 ms exceeds 50 ms"]
    run = RunResult(
        LoadProfile.parse(profile), list(records), wall_s=10.0, self_check=SelfCheck(valid=valid, reasons=reasons)
    )
    return build_run_doc(run, summarize(run.records, slo))


def benchmark_doc(
    runs: Sequence[RunDoc],
    sweep_max_rate: float | None = None,
    sweep: bool = False,
    slo: Slo | None = None,
    samples: Sequence[ResourceSample] = (),
) -> BenchmarkResult:
    """A whole typed result around `runs`."""
    return result_of(
        list(runs),
        sweep=SweepDoc(max_rate_meeting_slo=sweep_max_rate, stopped=None, attainment=0.95) if sweep else None,
        slo=None if slo is None else SloDoc(ttft_ms=slo.ttft_ms, tpot_ms=slo.tpot_ms, e2e_ms=slo.e2e_ms),
        samples=list(samples),
    )


def context(benchmark: BenchmarkResult | None = None, declared: Declared | None = None, **kw: Any) -> CheckContext:
    return CheckContext(
        endpoint=Endpoint("http://127.0.0.1:9", "m"),
        exposure=Exposure.LOCAL,
        slo=None,
        declared=declared or Declared(),
        benchmark=benchmark,
        **kw,
    )


def run_check(check: Check, ctx: CheckContext) -> CheckResult:
    return asyncio.run(check.run(ctx, check))
