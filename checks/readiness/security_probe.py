"""What every security check shares: one polite request, the collected error answers, key redaction.

The security checks run one after another against a server that may enforce a rate
limit. A 429 on a probe that is not about rate limiting says nothing about the thing
being probed, so `send` waits the server's `Retry-After` (bounded) and asks again;
otherwise a correctly rate-limited server would fail its own auth or input checks.

Every answer with a 4xx/5xx status is kept in `ctx.scratch[ERROR_ANSWERS]`, so the
error-body check can scan all of them, not just the few it provokes itself.
Evidence goes into reports, so `evidence` masks the API key even when a server
echoes it back in a body.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from checks.load.endpoint import API_PATHS
from checks.readiness.check import CheckContext
from checks.readiness.probe import DEFAULT_TIMEOUT_S, Auth, ProbeResponse, request
from reports.check_result import CheckStatus

# The OWASP Top 10 for LLM Applications, 2025 edition: the reference of every security line.
LLM01 = "OWASP LLM01:2025 Prompt Injection"
LLM02 = "OWASP LLM02:2025 Sensitive Information Disclosure"
LLM07 = "OWASP LLM07:2025 System Prompt Leakage"
LLM10 = "OWASP LLM10:2025 Unbounded Consumption"

ERROR_ANSWERS = "security.error_answers"  # ctx.scratch key: list[ProbeResponse] with status >= 400
RETRY_BUDGET_S = 12.0  # the longest a probe waits out 429s before it reports the 429 itself
MAX_RETRY_WAIT_S = 5.0  # one Retry-After longer than this is capped (the bucket refills meanwhile)
DEFAULT_CONTEXT_TOKENS = 32_768  # assumed when neither /v1/models nor the operator says


async def send(
    ctx: CheckContext,
    method: str,
    path: str,
    *,
    auth: Auth = "key",
    json_body: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    retry_429: bool = True,
) -> ProbeResponse:
    """One probe; waits out 429s within RETRY_BUDGET_S when `retry_429`, and remembers error answers."""
    give_up_at = time.monotonic() + RETRY_BUDGET_S
    while True:
        resp = await request(
            ctx.endpoint,
            method,
            path,
            auth=auth,
            json_body=json_body,
            data=data,
            headers=headers,
            timeout_s=timeout_s,
        )
        wait_s = retry_after_s(resp)
        if not retry_429 or resp.status != 429 or time.monotonic() + wait_s > give_up_at or ctx.cancel.is_set():
            break
        await asyncio.sleep(wait_s)
    if resp.status is not None and resp.status >= 400:
        ctx.scratch.setdefault(ERROR_ANSWERS, []).append(resp)
    return resp


def retry_after_s(resp: ProbeResponse) -> float:
    """The 429's Retry-After in seconds (delta form), capped; 1 s when absent or an HTTP date."""
    value = resp.header("retry-after")
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.1), MAX_RETRY_WAIT_S)


def evidence(ctx: CheckContext, resp: ProbeResponse, excerpt_chars: int = 120) -> str:
    """`resp.evidence()` with the API key masked, in case the server echoed it."""
    return redact(ctx, resp.evidence(excerpt_chars))


def redact(ctx: CheckContext, text: str) -> str:
    """`text` with every occurrence of the API key replaced by '[key]'."""
    key = ctx.endpoint.api_key
    return text.replace(key, "[key]") if key else text


SEVERITY = {CheckStatus.PASS: 0, CheckStatus.WARN: 1, CheckStatus.FAIL: 2}


def worst(statuses: list[CheckStatus]) -> CheckStatus:
    """The most severe of PASS/WARN/FAIL findings; PASS when there are none."""
    return max(statuses, key=SEVERITY.__getitem__, default=CheckStatus.PASS)


def unreachable(responses: list[ProbeResponse]) -> bool:
    """True when not one probe got an HTTP answer: the check measured nothing."""
    return all(r.status is None for r in responses)


def connect_failed(resp: ProbeResponse) -> bool:
    """No connection at all (refused, no route, DNS): the target is not there, as opposed to a hang or a reset."""
    return resp.status is None and any(
        word in (resp.error or "") for word in ("ClientConnectorError", "ConnectionRefusedError", "Cannot connect")
    )


def timed_out(resp: ProbeResponse) -> bool:
    return resp.status is None and (resp.error or "").startswith("timeout")


def unreachable_message(responses: list[ProbeResponse]) -> str:
    """Why a check measured nothing, naming the first transport error (for its ERROR line)."""
    first = next((r.error for r in responses if r.error), None) or "no answer"
    return f"the endpoint did not answer any probe ({first})"


async def context_tokens(ctx: CheckContext) -> tuple[int, str]:
    """The model's context length and where it came from: /v1/models (vLLM and ours say), declared, or assumed."""
    resp = await send(ctx, "GET", "/v1/models")
    body = resp.json()
    models = body.get("data") if isinstance(body, dict) else None
    for model in models if isinstance(models, list) else []:
        if isinstance(model, dict) and model.get("id") == ctx.endpoint.model:
            value = model.get("max_model_len") or model.get("context_length") or model.get("context_window")
            if isinstance(value, int) and value > 0:
                return value, "/v1/models"
    if ctx.declared.context_tokens:
        return ctx.declared.context_tokens, "declared"
    return DEFAULT_CONTEXT_TOKENS, "assumed"


def api_path(ctx: CheckContext) -> str:
    """The path the endpoint's generation requests go to (chat or completions)."""
    return API_PATHS[ctx.endpoint.api]


def generation_body(ctx: CheckContext, prompt: str, max_tokens: int = 1, **extra: Any) -> dict[str, Any]:
    """A request body on the endpoint's own API with `prompt` as the user's text."""
    body: dict[str, Any] = {"model": ctx.endpoint.model, "max_tokens": max_tokens, **extra}
    if ctx.endpoint.api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def answer_text(resp: ProbeResponse) -> str | None:
    """The generated text of a non-streamed chat or completions answer; None when there is none."""
    body = resp.json()
    if resp.status != 200 or not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        return None
    parts = []
    for choice in body["choices"]:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else choice.get("text")
        if isinstance(text, str):
            parts.append(text)
    return "".join(parts) if parts else None
