"""Unbounded consumption: the server must refuse what would tie it up (OWASP LLM10:2025).

Three questions, each answered with real requests that have deadlines:
- a burst above the declared rate limit gets 429 with Retry-After (REFERENCE RATE-1);
- a body of a few MiB is refused (413/400), not read and run, and not a 5xx or a hang (SIZE-3);
- a prompt far beyond the model's context, or an absurd max_tokens, is a 400/422 (SIZE-1, SIZE-2).

The probes stay small where they can: the burst asks for one token per request and
stops at the first 429; the oversized body asks for one token too, so a server that
takes it anyway spends as little as it can on our account.
"""

from __future__ import annotations

import asyncio
import json
import time

from checks.readiness.check import Check, CheckContext
from checks.readiness.probe import ProbeResponse
from checks.readiness.security_probe import (
    LLM10,
    api_path,
    connect_failed,
    context_tokens,
    evidence,
    generation_body,
    send,
    timed_out,
    unreachable,
    unreachable_message,
    worst,
)
from reports.check_result import Category, CheckResult, CheckStatus

MAX_BURST = 60  # requests, whatever the declared limit
BURST_WAVE = 8  # requests in flight at once during the burst
BURST_TIMEOUT_S = 20.0
OVERSIZED_BODY_BYTES = 4 * 1024 * 1024  # above TGI's 2 MB default and our 1 MiB
BODY_TIMEOUT_S = 20.0
CONTEXT_TIMEOUT_S = 20.0
MAX_OVERFLOW_PROMPT_BYTES = 1_500_000  # the context probe must not turn into a body-size probe
ABSURD_MAX_TOKENS = 10_000_000
CLEAN_REJECTIONS = frozenset({400, 413, 422})


def burst_size(rpm: int) -> int:
    """Enough requests to overrun a bucket we cannot see: twice the usual rpm/6 burst, or rpm/6 + 5; at most 60."""
    burst_guess = max(1, rpm // 6)
    return min(MAX_BURST, max(2 * burst_guess, rpm // 6 + 5))


async def check_rate_limit(ctx: CheckContext, check: Check) -> CheckResult:
    """A burst above the declared limit must meet 429 with Retry-After, and nothing worse.

    Sent in waves of BURST_WAVE, stopping at the first 429. All answered 200: WARN,
    since the bucket may be larger than the burst; but if more requests than the whole
    minute's allowance got through, the declared limit is plainly not enforced (open door).
    """
    rpm = ctx.declared.rate_limit_rpm
    if rpm is None:
        return check.skip(
            "no rate limit was declared: declare the requests per minute the deployment allows "
            "(rate_limit_rpm) to have a burst above it tested"
        )
    total = burst_size(rpm)
    path, body = api_path(ctx), generation_body(ctx, "Hi", max_tokens=1)
    answers: list[ProbeResponse] = []
    start = time.perf_counter()
    while len(answers) < total and not ctx.cancel.is_set():
        wave = min(BURST_WAVE, total - len(answers))
        answers += await asyncio.gather(
            *(send(ctx, "POST", path, json_body=body, timeout_s=BURST_TIMEOUT_S, retry_429=False) for _ in range(wave))
        )
        if any(r.status == 429 for r in answers):
            break
    elapsed_s = time.perf_counter() - start
    limited = [r for r in answers if r.status == 429]
    broken = [r for r in answers if r.status is None or r.status >= 500]
    shown = [f"{len(answers)} requests (max_tokens 1) in {elapsed_s:.1f} s against a declared {rpm} rpm"]
    shown += [evidence(ctx, r) for r in (limited[:1] + broken[:3] + answers[:2])]
    if unreachable(answers):
        return check.error(unreachable_message(answers), shown)
    if broken:
        return check.result(
            CheckStatus.FAIL,
            f"{len(broken)} of {len(answers)} burst requests failed (5xx, reset or timeout) instead of being limited",
            value=len(broken),
            threshold=0,
            unit="failed requests",
            evidence=shown,
        )
    if limited:
        first = answers.index(limited[0]) + 1
        retry_after = limited[0].header("retry-after")
        if retry_after is None:
            return check.result(
                CheckStatus.WARN,
                f"request {first} got 429 but no Retry-After header, so clients cannot back off politely",
                value=first,
                unit="requests",
                evidence=shown,
            )
        return check.result(
            CheckStatus.PASS,
            f"request {first} of the burst got 429 with Retry-After: {retry_after}",
            value=first,
            unit="requests",
            evidence=shown,
        )
    allowance = rpm * (1 + elapsed_s / 60)
    if len(answers) > allowance:
        return check.result(
            ctx.open_door(),
            f"all {len(answers)} requests were served within {elapsed_s:.1f} s, "
            f"more than the declared {rpm} rpm allows",
            value=len(answers),
            threshold=rpm,
            unit="requests",
            evidence=shown,
        )
    return check.result(
        CheckStatus.WARN,
        f"all {len(answers)} burst requests were served and none got 429: no "
        f"limit seen (or its burst allowance exceeds {len(answers)})",
        value=len(answers),
        threshold=rpm,
        unit="requests",
        evidence=shown,
    )


def _oversized_body(ctx: CheckContext) -> bytes:
    """A valid one-token request padded with whitespace to OVERSIZED_BODY_BYTES.

    The padding sits between JSON tokens, where it is legal and means nothing. So a
    server without a body limit parses it and answers 200 (the finding), rather than
    a 400 about the prompt's length hiding that it read 4 MiB; and nobody's tokenizer
    has to chew on megabytes of filler.
    """
    request = json.dumps(generation_body(ctx, "Hi", max_tokens=1)).encode()
    return request[:1] + b" " * (OVERSIZED_BODY_BYTES - len(request)) + request[1:]


def _rejection(resp: ProbeResponse, what: str, accepted: CheckStatus) -> tuple[CheckStatus, str]:
    """How one probe that must be refused went: clean 4xx, accepted (`accepted` status), or 5xx / hang (FAIL)."""
    if resp.status is None:
        return CheckStatus.FAIL, f"{what}: no answer ({resp.error}): the server hung or dropped the connection"
    if resp.status >= 500:
        return CheckStatus.FAIL, f"{what}: {resp.status} (a server error, not a clean refusal)"
    if resp.status in CLEAN_REJECTIONS:
        return CheckStatus.PASS, f"{what}: refused with {resp.status}"
    if 200 <= resp.status < 300:
        return accepted, f"{what}: accepted with {resp.status}"
    return CheckStatus.WARN, f"{what}: answered {resp.status}, expected 400, 413 or 422"


async def check_body_size(ctx: CheckContext, check: Check) -> CheckResult:
    """A few MiB of JSON must be refused: a server that reads and runs any body can be flooded cheaply."""
    resp = await send(ctx, "POST", api_path(ctx), data=_oversized_body(ctx), timeout_s=BODY_TIMEOUT_S)
    shown = [f"POST {resp.path} with a {OVERSIZED_BODY_BYTES // (1024 * 1024)} MiB JSON body", evidence(ctx, resp)]
    if resp.status in (401, 403):
        return check.error(f"the key was refused ({resp.status}), so the body limit could not be reached", shown)
    if connect_failed(resp):
        return check.error(unreachable_message([resp]), shown)
    if resp.status is None and not timed_out(resp):
        return check.result(
            CheckStatus.WARN,
            f"the connection was closed without an answer ({resp.error}): a "
            "proxy refusing the body may do this, but a 413 tells clients why",
            evidence=shown,
        )
    status, message = _rejection(resp, f"a {OVERSIZED_BODY_BYTES // (1024 * 1024)} MiB body", CheckStatus.FAIL)
    return check.result(status, message, value=resp.status, unit="HTTP status", evidence=shown)


async def check_context_limit(ctx: CheckContext, check: Check) -> CheckResult:
    """A prompt twice the context and max_tokens of ten million must be refused up front.

    A 200 for the long prompt means it was silently truncated (the answer ignores part
    of the input): WARN. A 200 for the absurd max_tokens means the limit was clamped
    without a word: WARN as well. A 5xx or a hang is FAIL.
    """
    n_ctx, source = await context_tokens(ctx)
    words = 2 * n_ctx + 16  # " a" is one token in every tokenizer we know, and one word on a word-level one
    shown = [f"model context {n_ctx} tokens ({source})"]
    probes: dict[str, dict[str, object]] = {}
    if 2 * words <= MAX_OVERFLOW_PROMPT_BYTES:
        probes[f"a prompt of about {words} tokens"] = generation_body(ctx, "a " * words, max_tokens=1)
    else:
        shown.append(f"no overflow prompt: {words} tokens would not fit in a {MAX_OVERFLOW_PROMPT_BYTES} byte body")
    probes[f"max_tokens {ABSURD_MAX_TOKENS}"] = generation_body(ctx, "Hi", max_tokens=ABSURD_MAX_TOKENS)
    answers = list(
        await asyncio.gather(
            *(send(ctx, "POST", api_path(ctx), json_body=body, timeout_s=CONTEXT_TIMEOUT_S) for body in probes.values())
        )
    )
    shown += [evidence(ctx, r) for r in answers]
    if all(connect_failed(r) for r in answers):
        return check.error(unreachable_message(answers), shown)
    if any(r.status in (401, 403) for r in answers):
        return check.error("the key was refused, so the context limits could not be reached", shown)
    outcomes = []
    for what, resp in zip(probes, answers, strict=True):
        counted = "prompt_tokens" if what.startswith("a prompt") else "completion_tokens"
        took = _usage(resp, counted)
        if counted == "prompt_tokens" and resp.status == 200 and took is not None and took >= 0.9 * words:
            shown.append(
                f"the whole prompt was taken ({took} prompt tokens): the context is larger than "
                f"{n_ctx} ({source}), so this probe shows nothing"
            )
            continue
        status, message = _rejection(resp, what, CheckStatus.WARN)
        if status == CheckStatus.WARN and resp.status == 200:
            message += f" (usage: {counted} {took})" if took is not None else " (no usage to tell what was kept)"
        outcomes.append((status, message))
    status = worst([s for s, _ in outcomes])
    refused = sum(1 for s, _ in outcomes if s == CheckStatus.PASS)
    return check.result(
        status,
        "; ".join(m for _, m in outcomes),
        value=refused,
        threshold=len(outcomes),
        unit="refused",
        evidence=shown,
    )


def _usage(resp: ProbeResponse, field: str) -> int | None:
    body = resp.json()
    usage = body.get("usage") if isinstance(body, dict) else None
    value = usage.get(field) if isinstance(usage, dict) else None
    return value if isinstance(value, int) else None


RATE_LIMIT = Check(
    "security.rate_limit",
    Category.SECURITY,
    "A burst above the declared rate limit gets 429 with Retry-After",
    check_rate_limit,
    LLM10,
    "Enforce a per-key request rate at the server or gateway (ours: --rate-limit; vLLM: a reverse proxy) "
    "and answer 429 with a Retry-After header.",
)
BODY_SIZE = Check(
    "security.input.body_size",
    Category.SECURITY,
    "An oversized request body is refused",
    check_body_size,
    LLM10,
    "Cap request bodies (ours: --max-body-bytes; TGI: --payload-limit; vLLM: the reverse proxy, e.g. nginx "
    "client_max_body_size) so the server answers 413.",
)
CONTEXT_LIMIT = Check(
    "security.input.context",
    Category.SECURITY,
    "Prompts beyond the context and absurd max_tokens are refused",
    check_context_limit,
    LLM10,
    "Validate prompt length plus max_tokens against the model context and answer 400 (vLLM does; set "
    "--max-model-len), rather than truncating or generating without bound.",
)
