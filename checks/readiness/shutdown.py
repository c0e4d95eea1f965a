"""`reliability.sigterm_drain`: SIGTERM during load loses no in-flight request (bundled target only).

Kubernetes, systemd and every rolling deploy stop a server with SIGTERM; a server that
drops its open streams then turns each deploy into user-visible errors. The check starts
`DRAIN_STREAMS` streams, waits until each has produced content, sends SIGTERM to the
bundled server's process (`ctx.bundled.proc`, nothing else), and requires every stream to
end normally (finish_reason or [DONE]) and the process to exit 0.

This stops the target. It is in `checks.readiness.reliability.FINAL_CHECKS`, not in the
checklist proper: a runner runs it after every other check, and never on a remote target
(there is no process of ours to signal, so it is SKIP there).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from typing import Any

from checks.readiness.check import Check, CheckContext
from checks.readiness.streams import StreamEnd, new_session, run_stream, stream_body
from reports.check_result import Category, CheckResult, CheckStatus

DRAIN_STREAMS = 3
DRAIN_MAX_TOKENS = 32
START_TIMEOUT_S = 120.0  # for every stream's first content
STREAM_TIMEOUT_S = 300.0
EXIT_TIMEOUT_S = 90.0  # the bundled server's default grace period is 30 s


def _wait_exit(proc: Any, timeout_s: float) -> int | None:
    """The exit code, or None if the process is still running after `timeout_s`."""
    try:
        return int(proc.wait(timeout=timeout_s))
    except subprocess.TimeoutExpired:
        return None


async def check_sigterm_drain(ctx: CheckContext, check: Check) -> CheckResult:
    proc = getattr(ctx.bundled, "proc", None) if ctx.bundled is not None else None
    if ctx.bundled is None:
        return check.skip("a remote target: Preflight has no server process to send SIGTERM to")
    if proc is None or proc.poll() is not None:
        code = None if proc is None else proc.returncode
        return check.error(f"the bundled server is not running (exit code {code}): nothing to drain")
    body = stream_body(ctx.endpoint, DRAIN_MAX_TOKENS)
    started = [asyncio.Event() for _ in range(DRAIN_STREAMS)]
    async with new_session(STREAM_TIMEOUT_S) as session:
        tasks = [asyncio.ensure_future(run_stream(session, ctx.endpoint, body, first_chunk=e)) for e in started]
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), START_TIMEOUT_S)
        except TimeoutError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return check.error(f"the streams produced no content within {START_TIMEOUT_S:g} s: SIGTERM not sent")
        early = [t.result() for t in tasks if t.done()]
        if any(not end.chunks for end in early):
            await asyncio.gather(*tasks, return_exceptions=True)
            broken = next(end for end in early if not end.chunks)
            return check.error(f"a stream failed before SIGTERM: {broken.describe()}")
        in_flight = sum(1 for t in tasks if not t.done())
        proc.send_signal(signal.SIGTERM)
        ends: list[StreamEnd] = list(await asyncio.gather(*tasks))
    code = await asyncio.to_thread(_wait_exit, proc, EXIT_TIMEOUT_S)
    evidence = [f"SIGTERM to pid {proc.pid} with {in_flight} of {DRAIN_STREAMS} streams generating"]
    evidence += [f"stream {i}: {end.describe()}" for i, end in enumerate(ends)]
    evidence.append("exit code: still running" if code is None else f"exit code {code}")
    lost = [end for end in ends if not end.completed]
    if lost:
        return check.result(
            CheckStatus.FAIL,
            f"SIGTERM lost {len(lost)} of {DRAIN_STREAMS} in-flight streams",
            value=len(lost),
            threshold=0,
            unit="streams",
            evidence=evidence,
        )
    if code is None:
        return check.result(
            CheckStatus.FAIL, f"the server did not exit within {EXIT_TIMEOUT_S:g} s of SIGTERM", evidence=evidence
        )
    if code != 0:
        return check.result(CheckStatus.FAIL, f"the server exited {code} after SIGTERM, not 0", evidence=evidence)
    if in_flight == 0:
        return check.error("every stream had finished before SIGTERM arrived: the drain was not tested", evidence)
    return check.result(
        CheckStatus.PASS,
        f"SIGTERM let all {in_flight} in-flight streams finish; exit code 0",
        value=0,
        threshold=0,
        unit="streams lost",
        evidence=evidence,
    )


SIGTERM_DRAIN = Check(
    "reliability.sigterm_drain",
    Category.RELIABILITY,
    "SIGTERM during load loses no in-flight request",
    check_sigterm_drain,
    reference="Google SRE launch checklist (graceful shutdown)",
    remediation="On SIGTERM stop accepting, let in-flight requests finish within a grace period (engine serve "
    "--grace-period; Kubernetes terminationGracePeriodSeconds above it), then exit 0",
)
