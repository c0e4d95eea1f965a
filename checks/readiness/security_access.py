"""Who can get in: API-key enforcement, browser origins (CORS), and routes that should not be served.

All three are plain HTTP questions with a known safe answer (REFERENCE.md (a) AUTH-1..4,
CORS-1, EXP-2), so each check sends a handful of bounded requests and compares. Open
doors are judged by exposure through `ctx.open_door()`: WARN on a machine nobody
else reaches, FAIL once other people can.
"""

from __future__ import annotations

import asyncio
import uuid

from checks.readiness.check import Check, CheckContext
from checks.readiness.probe import ProbeResponse
from checks.readiness.security_probe import (
    LLM02,
    LLM10,
    api_path,
    evidence,
    send,
    unreachable,
    unreachable_message,
    worst,
)
from reports.check_result import Category, CheckResult, CheckStatus, Exposure

EVIL_ORIGIN = "https://evil.example"
DOC_ROUTES = ("/docs", "/redoc", "/openapi.json")
DEV_ROUTES = ("/server_info", "/reset_prefix_cache")  # vLLM's dev mode: server internals, cache control
STATE_ROUTES = ("/is_paused", "/is_sleeping")  # vLLM: harmless to read, but say the control API is up


def _is_ok(resp: ProbeResponse) -> bool:
    return resp.status is not None and 200 <= resp.status < 300


def _generation_bodies(ctx: CheckContext) -> dict[str, dict[str, object]]:
    """Tiny requests for both generation routes: a server may guard the one we use and forget the other."""
    model = ctx.endpoint.model
    return {
        "/v1/chat/completions": {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
        "/v1/completions": {"model": model, "prompt": "Hi", "max_tokens": 1},
    }


async def check_auth(ctx: CheckContext, check: Check) -> CheckResult:
    """No key, a wrong key and a key in the query string must all be refused.

    Without a configured key (`api_key` None) the no-key probe answering 200 is the
    finding itself. PASS needs a positive refusal (401/403) on the endpoint's own
    generation route: a 404 or a timeout there shows nothing about auth, so ERROR.
    """
    bodies = _generation_bodies(ctx)
    own = api_path(ctx)
    probes = [send(ctx, "POST", path, auth="none", json_body=body) for path, body in bodies.items()]
    probes += [send(ctx, "GET", "/v1/models", auth="none"), send(ctx, "GET", "/metrics", auth="none")]
    probes.append(send(ctx, "POST", own, auth="wrong", json_body=bodies[own]))
    probes.append(send(ctx, "GET", "/v1/models", auth="wrong"))
    if ctx.endpoint.api_key:
        probes.append(send(ctx, "POST", own, auth="query", json_body=bodies[own]))
    answers = list(await asyncio.gather(*probes))
    shown = [evidence(ctx, r) for r in answers]
    if unreachable(answers):
        return check.error(unreachable_message(answers), shown)

    findings: list[tuple[CheckStatus, str]] = []
    for resp in answers:
        if not _is_ok(resp):
            continue
        where = f"{resp.method} {resp.path}"
        if resp.auth == "query":
            findings.append((ctx.open_door(), f"the key in the query string is accepted on {where} (URLs get logged)"))
        elif resp.path in bodies:
            who = "without a key" if resp.auth == "none" else "with a wrong key"
            findings.append((ctx.open_door(), f"{where} generates {who}"))
        else:
            who = "without a key" if resp.auth == "none" else "with a wrong key"
            status = CheckStatus.FAIL if ctx.exposure == Exposure.PUBLIC else CheckStatus.WARN
            findings.append((status, f"{where} answers {who}"))
    if findings:
        status = worst([s for s, _ in findings])
        return check.result(
            status,
            "; ".join(text for _, text in findings),
            value=len(findings),
            threshold=0,
            unit="open routes",
            evidence=shown,
        )
    own_no_key = next(r for r in answers if r.path == own and r.auth == "none")
    if own_no_key.status not in (401, 403):
        return check.error(
            f"could not tell whether {own} needs a key: without one it answered "
            f"{own_no_key.status or own_no_key.error}, not 200 and not 401/403",
            shown,
        )
    note = "" if ctx.endpoint.api_key else " (no key was given to Preflight, so the other checks will be refused too)"
    return check.result(
        CheckStatus.PASS,
        f"requests without a valid key are refused{note}",
        value=0,
        threshold=0,
        unit="open routes",
        evidence=shown,
    )


def _cors_finding(resp: ProbeResponse) -> tuple[CheckStatus, str] | None:
    allow_origin = resp.header("access-control-allow-origin")
    credentials = (resp.header("access-control-allow-credentials") or "").strip().lower() == "true"
    where = f"{resp.method} {resp.path}"
    if allow_origin is None:
        return None
    allow_origin = allow_origin.strip()
    if allow_origin in ("*", EVIL_ORIGIN) and credentials:
        how = "reflects the foreign origin" if allow_origin == EVIL_ORIGIN else "allows any origin ('*')"
        return CheckStatus.FAIL, f"{where} {how} with Access-Control-Allow-Credentials: true"
    if allow_origin == EVIL_ORIGIN:
        return CheckStatus.WARN, f"{where} reflects the foreign origin {EVIL_ORIGIN}"
    if allow_origin == "*":
        return CheckStatus.WARN, f"{where} allows any origin ('*')"
    return None


async def check_cors(ctx: CheckContext, check: Check) -> CheckResult:
    """A web page on a foreign origin must not be able to call the endpoint from a visitor's browser.

    The preflight goes without a key, as browsers send it; the GET carries the key, as a
    page holding one would. Either answer granting the foreign origin counts.
    """
    origin = {"Origin": EVIL_ORIGIN}
    preflight = {
        **origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    answers = list(
        await asyncio.gather(
            send(ctx, "OPTIONS", api_path(ctx), auth="none", headers=preflight),
            send(ctx, "GET", "/v1/models", headers=origin),
        )
    )
    shown = [evidence(ctx, r) + _cors_headers(r) for r in answers]
    if unreachable(answers):
        return check.error(unreachable_message(answers), shown)
    findings = [f for f in (_cors_finding(r) for r in answers) if f is not None]
    if findings:
        return check.result(worst([s for s, _ in findings]), "; ".join(t for _, t in findings), evidence=shown)
    return check.result(CheckStatus.PASS, f"the foreign origin {EVIL_ORIGIN} is not granted access", evidence=shown)


def _cors_headers(resp: ProbeResponse) -> str:
    names = ("access-control-allow-origin", "access-control-allow-credentials")
    found = [f"{n}: {resp.headers[n]}" for n in names if n in resp.headers]
    return f" [{'; '.join(found)}]" if found else ""


async def check_exposed_routes(ctx: CheckContext, check: Check) -> CheckResult:
    """API docs and control routes are for development; GET only, never POST a control route.

    A route counts as served when GET answers 2xx with a body unlike that of a made-up
    path (a catch-all that answers 200 everywhere is not a docs page). Reachable without
    a key is an open door; with the key only, a WARN.
    """
    routes = DOC_ROUTES + DEV_ROUTES + STATE_ROUTES
    control = f"/preflight-no-such-route-{uuid.uuid4().hex[:8]}"
    answers = list(await asyncio.gather(*(send(ctx, "GET", p) for p in (control, *routes))))
    baseline, by_route = answers[0], dict(zip(routes, answers[1:], strict=True))
    if unreachable(answers):
        return check.error(unreachable_message(answers), [evidence(ctx, r) for r in answers])
    served = [p for p, r in by_route.items() if _is_ok(r) and not (_is_ok(baseline) and r.body == baseline.body)]
    open_answers = dict(
        zip(served, await asyncio.gather(*(send(ctx, "GET", p, auth="none") for p in served)), strict=True)
    )
    shown = [evidence(ctx, r) for r in answers] + [evidence(ctx, r) for r in open_answers.values()]

    findings: list[tuple[CheckStatus, str]] = []
    for path in served:
        without_key = _is_ok(open_answers[path])
        who = "to anyone" if without_key else "to key holders"
        if path in STATE_ROUTES:
            findings.append((CheckStatus.WARN, f"{path} is served {who} (the control API is enabled)"))
        elif path in DEV_ROUTES or without_key:
            findings.append((ctx.open_door(), f"{path} is served {who}"))
        else:
            findings.append((CheckStatus.WARN, f"{path} is served {who}"))
    if findings:
        return check.result(
            worst([s for s, _ in findings]),
            "; ".join(t for _, t in findings),
            value=len(findings),
            threshold=0,
            unit="routes",
            evidence=shown,
        )
    return check.result(
        CheckStatus.PASS,
        f"none of {', '.join(routes)} is served",
        value=0,
        threshold=0,
        unit="routes",
        evidence=shown,
    )


AUTH = Check(
    "security.auth",
    Category.SECURITY,
    "Requests without a valid API key are refused",
    check_auth,
    LLM10,
    "Require an API key on every route but /health (vLLM: --api-key; a gateway otherwise), compare it in the "
    "Authorization header only, and never accept it in the query string.",
)
CORS = Check(
    "security.cors",
    Category.SECURITY,
    "Foreign web origins get no browser access",
    check_cors,
    LLM02,
    "List the origins that may call the API (vLLM: --allowed-origins; ours: --cors-origin) and never combine "
    "'*' or a reflected origin with Access-Control-Allow-Credentials: true.",
)
EXPOSED_ROUTES = Check(
    "security.exposed_routes",
    Category.SECURITY,
    "API docs and admin routes are not served",
    check_exposed_routes,
    LLM02,
    "Turn off the docs (FastAPI: docs_url/openapi_url None) and dev-mode routes (unset VLLM_SERVER_DEV_MODE), "
    "or block them at the reverse proxy.",
)
