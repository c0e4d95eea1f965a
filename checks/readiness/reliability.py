"""Reliability checks: does the server stay whole when clients misbehave and load exceeds its limits?

- `reliability.cancel_storm`: `STORM_STREAMS` streams hang up mid-generation. The server
  must still answer, and its running requests and KV-cache usage (read from `/metrics`
  through `checks.readiness.metrics_names`) must return to what they were before the
  storm within `RECOVERY_DEADLINE_S`. Without usable metrics only the first half can be
  measured: the result is then WARN, saying the second half was not checked (never PASS
  on what was not measured; not ERROR either, since the monitoring checks already fail
  a server without metrics and the verdict should not be incomplete twice for it).
- `reliability.slow_reader` (`checks.readiness.slow_reader`): one client reading very
  slowly must not stall the others.
- `reliability.queue_overflow`: a burst above `ctx.declared.max_queue` plus the running
  capacity gets 429/503 quickly, not timeouts or other 5xx.
- `reliability.sigterm_drain` (`checks.readiness.shutdown`): SIGTERM to the bundled server
  lets in-flight streams finish. It stops the target, so it is not in
  `RELIABILITY_CHECKS` but in `FINAL_CHECKS`, which a runner runs after every other check.

Every scale here is bounded (at most `OVERFLOW_MAX_REQUESTS` requests at once, short
outputs), so a check is safe against a shared server and quick on loopback.
"""

from __future__ import annotations

import asyncio
import time

from checks.load.endpoint import Endpoint
from checks.readiness.check import Check, CheckContext
from checks.readiness.metrics_scrape import FOLLOW_UP_DEADLINE_S, at_baseline, read_target_metrics
from checks.readiness.probe import ProbeResponse, request, tiny_request
from checks.readiness.shutdown import SIGTERM_DRAIN
from checks.readiness.slow_reader import SLOW_READER
from checks.readiness.streams import StreamEnd, new_session, run_stream, stream_body
from reports.check_result import Category, CheckResult, CheckStatus
from reports.metrics_timeline import usage_line

STORM_STREAMS = 8
STORM_MAX_TOKENS = 256  # long enough that every stream is still generating when it is dropped
STORM_DROP_AFTER_CHUNKS = 2
STORM_TIMEOUT_S = 120.0  # for a stream to reach its drop point (a queued one waits for a slot)
RECOVERY_DEADLINE_S = FOLLOW_UP_DEADLINE_S
RECOVERY_POLL_S = 0.25
TINY_TIMEOUT_S = 30.0
OVERFLOW_MAX_REQUESTS = 100
OVERFLOW_MAX_TOKENS = 16
OVERFLOW_TIMEOUT_S = 300.0
QUICK_REJECT_S = 5.0  # a shed request must be told at once, not after it waited in line
ASSUMED_CAPACITY = 16  # running slots assumed when neither --concurrency nor the bundled server says


async def _tiny(endpoint: Endpoint) -> ProbeResponse:
    path, body = tiny_request(endpoint)
    return await request(endpoint, "POST", path, json_body=body, timeout_s=TINY_TIMEOUT_S)


def _answers(resp: ProbeResponse) -> bool:
    body = resp.json()
    return resp.status == 200 and isinstance(body, dict) and bool(body.get("choices"))


async def _wait_for_baseline(endpoint: Endpoint, running0: float | None, kv0: float | None) -> tuple[float | None, str]:
    """Seconds until running and KV usage are back at the baseline (None: past the deadline), and the last reading."""
    start = time.perf_counter()
    last = "no reading"
    while True:
        got = await read_target_metrics(endpoint)
        if got.reading is not None and got.problem is None:
            running, kv = got.reading.values["running"], got.reading.values["kv_cache_usage"]
            last = usage_line(running, kv)
            if at_baseline(running, kv, running0, kv0):
                return time.perf_counter() - start, last
        else:
            last = got.problem or "no reading"
        if time.perf_counter() - start > RECOVERY_DEADLINE_S:
            return None, last
        await asyncio.sleep(RECOVERY_POLL_S)


async def check_cancel_storm(ctx: CheckContext, check: Check) -> CheckResult:
    endpoint = ctx.endpoint
    before = await read_target_metrics(endpoint)
    values = before.reading.values if before.reading is not None and before.problem is None else {}
    running0, kv0 = values.get("running"), values.get("kv_cache_usage")
    usable = running0 is not None or kv0 is not None
    evidence = [
        f"before: {usage_line(running0, kv0)}" if usable else f"before: {before.problem or 'no usable metrics'}"
    ]
    body = stream_body(endpoint, STORM_MAX_TOKENS)
    async with new_session(STORM_TIMEOUT_S) as session:
        ends = await asyncio.gather(
            *(
                run_stream(session, endpoint, body, drop_after_chunks=STORM_DROP_AFTER_CHUNKS)
                for _ in range(STORM_STREAMS)
            )
        )
    dropped = [e for e in ends if e.dropped]
    evidence.append(f"{len(dropped)} of {STORM_STREAMS} streams dropped after {STORM_DROP_AFTER_CHUNKS} chunks")
    evidence += sorted({e.describe() for e in ends if not e.dropped})[:3]
    if not dropped:
        return check.error("no stream reached its drop point: the cancellation storm could not be staged", evidence)
    recovered_s, last = (None, "") if not usable else await _wait_for_baseline(endpoint, running0, kv0)
    if usable:
        evidence.append(f"after: {last}" + ("" if recovered_s is None else f", back in {recovered_s:.2f} s"))
    tiny = await _tiny(endpoint)
    evidence.append(tiny.evidence())
    if not _answers(tiny):
        if tiny.status is None and not (tiny.error or "").startswith("timeout"):
            return check.result(
                CheckStatus.FAIL,
                f"the server is gone after {len(dropped)} client disconnects ({tiny.error})",
                evidence=evidence,
            )
        return check.result(
            CheckStatus.FAIL, f"the server stopped serving after {len(dropped)} client disconnects", evidence=evidence
        )
    if not usable:
        return check.result(
            CheckStatus.WARN,
            f"the server still answers after {len(dropped)} disconnects; whether "
            "it freed their slots and KV cache was not checked: no usable /metrics",
            evidence=evidence,
        )
    if recovered_s is None:
        return check.result(
            CheckStatus.FAIL,
            f"{len(dropped)} dropped streams were not freed: {last} {RECOVERY_DEADLINE_S:g} s later",
            threshold=RECOVERY_DEADLINE_S,
            unit="s",
            evidence=evidence,
        )
    return check.result(
        CheckStatus.PASS,
        f"after {len(dropped)} disconnects the server answers and freed their slots in {recovered_s:.1f} s",
        value=round(recovered_s, 2),
        threshold=RECOVERY_DEADLINE_S,
        unit="s",
        evidence=evidence,
    )


def _capacity(ctx: CheckContext) -> tuple[int, str]:
    """Running slots: declared, else the bundled server's --max-num-seqs, else an assumption (said so)."""
    if ctx.declared.concurrency is not None:
        return ctx.declared.concurrency, "declared concurrency"
    options = getattr(ctx.bundled, "options", None)
    if options is not None and getattr(options, "max_num_seqs", None):
        return int(options.max_num_seqs), "the bundled server's --max-num-seqs"
    return ASSUMED_CAPACITY, "assumed (declare the concurrency to size the burst)"


def _overflow_findings(ends: list[StreamEnd], elapsed: list[float]) -> dict[str, list[str]]:
    """The burst's outcomes by kind: served, shed (429/503), slow sheds, timeouts and other failures."""
    out: dict[str, list[str]] = {"served": [], "shed": [], "slow_shed": [], "timeout": [], "other": []}
    for end, took in zip(ends, elapsed, strict=True):
        if end.completed:
            out["served"].append(end.describe())
        elif end.status in (429, 503):
            out["slow_shed" if took > QUICK_REJECT_S else "shed"].append(f"{end.status} after {took:.1f} s")
        elif end.error == "timeout":
            out["timeout"].append(f"timeout after {took:.0f} s")
        else:
            out["other"].append(end.describe())
    return out


async def check_queue_overflow(ctx: CheckContext, check: Check) -> CheckResult:
    max_queue = ctx.declared.max_queue
    if max_queue is None:
        return check.skip("no max_queue declared: declare the server's waiting-queue limit to test its overflow")
    capacity, said_by = _capacity(ctx)
    margin = max(8, (max_queue + capacity) // 4)
    n = max_queue + capacity + margin
    if n > OVERFLOW_MAX_REQUESTS:
        return check.skip(
            f"max_queue {max_queue} + {capacity} running needs {n} requests, over this check's "
            f"bound of {OVERFLOW_MAX_REQUESTS}"
        )
    evidence = [f"{n} concurrent requests = max_queue {max_queue} + {capacity} running ({said_by}) + {margin}"]
    body = stream_body(ctx.endpoint, OVERFLOW_MAX_TOKENS)

    async def timed(session: object) -> tuple[StreamEnd, float]:
        start = time.perf_counter()
        end = await run_stream(session, ctx.endpoint, body)  # type: ignore[arg-type]
        return end, (end.end_s or time.perf_counter()) - start

    async with new_session(OVERFLOW_TIMEOUT_S) as session:
        results = await asyncio.gather(*(timed(session) for _ in range(n)))
    found = _overflow_findings([r[0] for r in results], [r[1] for r in results])
    evidence.append(", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in found.items()))
    for kind in ("timeout", "other", "slow_shed"):
        evidence += found[kind][:3]
    shed = len(found["shed"]) + len(found["slow_shed"])
    if found["served"] == [] and shed == 0 and all(e.status is None for e, _ in results):
        return check.error("no request of the burst got an answer: the target is unreachable", evidence)
    if found["timeout"] or found["other"]:
        bad = len(found["timeout"]) + len(found["other"])
        return check.result(
            CheckStatus.FAIL,
            f"{bad} of {n} requests above the queue limit timed out or failed instead of getting 429/503",
            value=bad,
            threshold=0,
            unit="requests",
            evidence=evidence,
        )
    if found["slow_shed"]:
        return check.result(
            CheckStatus.FAIL,
            f"{len(found['slow_shed'])} requests were shed only after over {QUICK_REJECT_S:g} s",
            value=len(found["slow_shed"]),
            threshold=0,
            unit="requests",
            evidence=evidence,
        )
    if shed == 0:
        return check.result(
            CheckStatus.WARN,
            f"all {n} requests were served: the queue limit {max_queue} was not "
            "seen (larger capacity than assumed, or no limit)",
            evidence=evidence,
        )
    return check.result(
        CheckStatus.PASS,
        f"{shed} of {n} requests over the limit got 429/503 within {QUICK_REJECT_S:g} s; none timed out",
        value=shed,
        unit="requests",
        evidence=evidence,
    )


CANCEL_STORM = Check(
    "reliability.cancel_storm",
    Category.RELIABILITY,
    "Client disconnects mid-generation free their slots",
    check_cancel_storm,
    reference="OWASP LLM10 (unbounded consumption)",
    remediation="Abort a request when its client disconnects and free its KV blocks (vLLM and llama.cpp do; "
    "a gateway must pass the disconnect through)",
)
QUEUE_OVERFLOW = Check(
    "reliability.queue_overflow",
    Category.RELIABILITY,
    "A burst above the queue limit gets 429/503, not timeouts",
    check_queue_overflow,
    reference="OWASP LLM10 (unbounded consumption); Google SRE launch checklist",
    remediation="Bound the waiting queue (vLLM: --max-num-seqs with a gateway limit; TGI: --max-concurrent-requests) "
    "and answer overflow with 429 or 503 and Retry-After",
)

RELIABILITY_CHECKS: list[Check] = [CANCEL_STORM, SLOW_READER, QUEUE_OVERFLOW]
# Checks that stop or damage the target: a runner runs these after every other check, in this order.
FINAL_CHECKS: list[Check] = [SIGTERM_DRAIN]
