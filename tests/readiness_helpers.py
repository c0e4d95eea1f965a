"""Real records and real benchmark documents for the readiness tests: no server, no clock.

Run documents are built by `checks.load.benchmark._run_json`, the function `run_benchmark`
uses, so the checks read exactly the shape a real run hands them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from checks.load.benchmark import _run_json
from checks.load.endpoint import Endpoint
from checks.load.loadgen import RunResult, SelfCheck
from checks.load.metrics import Slo, summarize
from checks.load.profiles import LoadProfile
from checks.load.records import ErrorKind, RequestRecord, TokenSource
from checks.readiness.check import Check, CheckContext, Declared
from reports.check_result import CheckResult, Exposure


def record(
    i: int, ttft_ms: float, tpot_ms: float = 20.0, tokens: int = 11, send_s: float | None = None, warmup: bool = False
) -> RequestRecord:
    """A successful streamed request: first token after `ttft_ms`, then one token per `tpot_ms`."""
    send = i * 0.01 if send_s is None else send_s
    first = send + ttft_ms / 1000
    chunks = [first + k * tpot_ms / 1000 for k in range(tokens)]
    return RequestRecord(
        request_id=i, scheduled_s=None, ready_s=send, send_s=send, first_token_s=first, chunk_times_s=chunks,
        chunk_tokens=[1] * tokens, end_s=chunks[-1], input_tokens=100, output_tokens=tokens,
        token_source=TokenSource.USAGE, ok=True, http_status=200, error_kind=None, error_excerpt=None, warmup=warmup,
    )  # fmt: skip


def failure(i: int, status: int = 503) -> RequestRecord:
    """A request the server refused with `status` before streaming anything."""
    send = i * 0.01
    return RequestRecord(
        request_id=i, scheduled_s=None, ready_s=send, send_s=send, first_token_s=None, chunk_times_s=[],
        chunk_tokens=[], end_s=send + 0.005, input_tokens=100, output_tokens=None, token_source=None, ok=False,
        http_status=status, error_kind=ErrorKind.HTTP, error_excerpt=f"HTTP {status}",
    )  # fmt: skip


def spread(n: int, low_ms: float, high_ms: float) -> list[float]:
    """n values evenly from low to high: a known distribution whose percentiles are easy to place."""
    return [low_ms + (high_ms - low_ms) * k / max(1, n - 1) for k in range(n)]


def run_doc(
    records: Sequence[RequestRecord], profile: str = "concurrency:4", valid: bool = True, slo: Slo | None = None
) -> dict[str, Any]:
    reasons = [] if valid else ["schedule lag p99 120 ms exceeds 50 ms"]
    run = RunResult(LoadProfile.parse(profile), list(records), wall_s=10.0, self_check=SelfCheck(valid=valid,
                    reasons=reasons))  # fmt: skip
    return _run_json(run, summarize(run.records, slo).to_dict())


def benchmark_doc(
    runs: Sequence[dict[str, Any]],
    sweep_max_rate: float | None = None,
    sweep: bool = False,
    slo: Slo | None = None,
    samples: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The parts of run_benchmark's result the checks read, in its shape."""
    return {
        "valid": all(r["self_check"]["valid"] for r in runs),
        "runs": list(runs),
        "sweep": {"max_rate_meeting_slo": sweep_max_rate, "stopped": None, "attainment": 0.95} if sweep else None,
        "slo": None if slo is None else {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms, "e2e_ms": slo.e2e_ms},
        "resources": {"summary": {}, "samples": list(samples), "gpu_note": None},
    }


def context(benchmark: dict[str, Any] | None = None, declared: Declared | None = None, **kw: Any) -> CheckContext:
    return CheckContext(
        endpoint=Endpoint("http://127.0.0.1:9", "m"), exposure=Exposure.LOCAL, slo=None,
        declared=declared or Declared(), benchmark=benchmark, **kw,
    )  # fmt: skip


def run_check(check: Check, ctx: CheckContext) -> CheckResult:
    return asyncio.run(check.run(ctx, check))
