"""`reliability.slow_reader`: one client reading its stream very slowly must not stall the others.

A server that writes to each socket in turn, or whose batch waits for every stream's
write to drain, lets one slow mobile client hold everyone's tokens back. The check runs
the same small set of normal streams twice, beside one long stream:

1. baseline: the long stream is read at full speed;
2. test: the long stream is read `SLOW_READ_BYTES` at a time with `SLOW_PAUSE_S` pauses,
   over a socket with a tiny receive buffer, so the server's writes really wait on it.

The long stream is in the running batch in both phases, so the batch is the same size
and only the reading differs. The normal streams' median E2E in the test phase must stay
within `MAX_RATIO` x the baseline + `SLACK_S` (generous: the phases run back to back on
a shared machine, and the point is a stall, seconds to forever, not a few percent).
Both phases are bounded: the long stream is closed as soon as the normal ones are done,
and no phase runs past `PHASE_BUDGET_S`.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

from checks.load.endpoint import Endpoint
from checks.readiness.check import Check, CheckContext
from checks.readiness.streams import SlowRead, StreamEnd, new_session, run_stream, slow_read, stream_body
from reports.check_result import Category, CheckResult, CheckStatus

NORMAL_STREAMS = 3
NORMAL_MAX_TOKENS = 16
LONG_MAX_TOKENS = 1024  # more than the socket buffers hold, so a slow reader is felt; closed early anyway
SLOW_READ_BYTES = 64
SLOW_PAUSE_S = 0.5
PHASE_BUDGET_S = 180.0
START_TIMEOUT_S = 120.0  # for the long stream's first bytes
MAX_RATIO = 3.0
SLACK_S = 1.0


@dataclass(slots=True)
class Phase:
    """The normal streams of one phase: how they ended and their E2E and TTFT in seconds."""

    ends: list[StreamEnd]
    e2e_s: list[float]
    ttft_s: list[float]

    @property
    def ok(self) -> bool:
        return all(e.completed for e in self.ends)

    @property
    def median_e2e_s(self) -> float:
        return statistics.median(self.e2e_s)

    def describe(self, label: str) -> str:
        if not self.ok:
            broken = [e.describe() for e in self.ends if not e.completed]
            return f"{label}: {len(broken)} of {len(self.ends)} normal streams failed: {broken[0]}"
        ttft = statistics.median(self.ttft_s)
        return f"{label}: median E2E {self.median_e2e_s * 1000:.0f} ms, median TTFT {ttft * 1000:.0f} ms"


async def _normal_streams(endpoint: Endpoint) -> Phase:
    body = stream_body(endpoint, NORMAL_MAX_TOKENS, prompt="Name three colours.")

    async def one(session: object) -> tuple[StreamEnd, float]:
        start = time.perf_counter()
        return await run_stream(session, endpoint, body), start  # type: ignore[arg-type]

    async with new_session(PHASE_BUDGET_S) as session:
        runs = await asyncio.gather(*(one(session) for _ in range(NORMAL_STREAMS)))
    ends = [end for end, _ in runs]
    e2e = [end.end_s - start for end, start in runs if end.completed and end.end_s is not None]
    ttft = [end.first_chunk_s - start for end, start in runs if end.completed and end.first_chunk_s is not None]
    return Phase(ends, e2e, ttft)


async def _beside_fast_reader(endpoint: Endpoint) -> tuple[Phase | None, str]:
    started = asyncio.Event()
    async with new_session(PHASE_BUDGET_S) as session:
        long = asyncio.ensure_future(
            run_stream(session, endpoint, stream_body(endpoint, LONG_MAX_TOKENS), first_chunk=started)
        )
        try:
            await asyncio.wait_for(started.wait(), START_TIMEOUT_S)
            if long.done():
                return None, f"the long stream ended before the normal ones began: {long.result().describe()}"
            return await _normal_streams(endpoint), "baseline: the long stream read at full speed"
        finally:
            long.cancel()  # closes its connection: the server aborts it
            await asyncio.gather(long, return_exceptions=True)


async def _beside_slow_reader(endpoint: Endpoint) -> tuple[Phase | None, str]:
    started, done = asyncio.Event(), asyncio.Event()
    body = stream_body(endpoint, LONG_MAX_TOKENS)
    reader = asyncio.ensure_future(
        slow_read(
            endpoint,
            body,
            read_bytes=SLOW_READ_BYTES,
            pause_s=SLOW_PAUSE_S,
            until=done,
            budget_s=PHASE_BUDGET_S,
            started=started,
        )
    )
    began = time.perf_counter()
    try:
        await asyncio.wait_for(started.wait(), START_TIMEOUT_S)
        if reader.done():
            return None, f"the slow reader got no answer: {_describe_slow(reader.result(), 0.0)}"
        phase = await _normal_streams(endpoint)
    finally:
        done.set()
        got: SlowRead = await reader
    return phase, _describe_slow(got, time.perf_counter() - began)


def _describe_slow(got: SlowRead, took_s: float) -> str:
    if got.status is None:
        return f"slow reader: no HTTP answer ({got.error or 'connection closed'})"
    ended = "; its reply ended: the socket buffers held it all" if got.eof else ""
    return f"slow reader: HTTP {got.status}, {got.bytes_read} bytes in {got.reads} reads over {took_s:.1f} s{ended}"


async def check_slow_reader(ctx: CheckContext, check: Check) -> CheckResult:
    try:
        baseline, base_note = await _beside_fast_reader(ctx.endpoint)
    except TimeoutError:
        return check.error(f"the long stream sent nothing within {START_TIMEOUT_S:g} s: could not stage the baseline")
    evidence = [base_note]
    if baseline is None or not baseline.ok:
        return check.error(
            "the baseline could not be measured",
            evidence + ([baseline.describe("baseline")] if baseline is not None else []),
        )
    evidence.append(baseline.describe("beside a fast reader"))
    try:
        slowed, slow_note = await _beside_slow_reader(ctx.endpoint)
    except TimeoutError:
        return check.error(f"the slow reader got nothing within {START_TIMEOUT_S:g} s", evidence)
    evidence.append(slow_note)
    if slowed is None:
        return check.error("the slow reader could not be staged", evidence)
    evidence.append(slowed.describe("beside the slow reader"))
    limit_s = MAX_RATIO * baseline.median_e2e_s + SLACK_S
    if not slowed.ok:
        return check.result(CheckStatus.FAIL, "normal streams failed while one client read slowly", evidence=evidence)
    ratio = slowed.median_e2e_s / baseline.median_e2e_s
    if slowed.median_e2e_s > limit_s:
        return check.result(
            CheckStatus.FAIL,
            f"one slow reader stalled the other streams: median E2E {ratio:.1f}x the baseline",
            value=round(slowed.median_e2e_s * 1000),
            threshold=round(limit_s * 1000),
            unit="ms",
            evidence=evidence,
        )
    return check.result(
        CheckStatus.PASS,
        f"the other streams kept their pace beside a slow reader ({ratio:.2f}x the baseline E2E)",
        value=round(slowed.median_e2e_s * 1000),
        threshold=round(limit_s * 1000),
        unit="ms",
        evidence=evidence,
    )


SLOW_READER = Check(
    "reliability.slow_reader",
    Category.RELIABILITY,
    "A slow reader does not stall the other streams",
    check_slow_reader,
    reference="OWASP LLM10 (unbounded consumption)",
    remediation="Write to each client asynchronously with a bounded per-connection buffer, and drop clients that "
    "stop reading (a proxy's send timeout), so one slow socket never holds the batch",
)
