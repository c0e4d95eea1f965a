"""Bad requests get clean 4xx answers, and no error answer tells an attacker how the server is built.

`check_malformed` sends broken JSON, a wrong type and JSON nested far deeper than any
real request (REFERENCE INP-1): each must be a 400/422, since a 500 means the input
reached code that did not expect it, and a hang means it is still there.

`check_error_leaks` reads every error answer the security probes collected (see
`security_probe.ERROR_ANSWERS`) plus a few it provokes itself, and looks for what a
stack trace, a file path or a version string looks like. It provokes its own so it
means something when run alone; run after the others it sees their answers too.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid

from checks.readiness.check import Check, CheckContext
from checks.readiness.probe import ProbeResponse
from checks.readiness.security_probe import (
    ERROR_ANSWERS,
    LLM02,
    LLM10,
    api_path,
    connect_failed,
    evidence,
    generation_body,
    redact,
    send,
    unreachable,
    unreachable_message,
    worst,
)
from reports.check_result import Category, CheckResult, CheckStatus

MALFORMED_TIMEOUT_S = 10.0
NESTING_DEPTH = 5_000  # 10 KB, under any body limit; far past the 1000 frames Python's json recurses through
CLEAN = frozenset({400, 413, 422})

# What leaks look like: (finding, pattern, is it serious). Serious ones (a stack trace, a path
# on the server's disk) are an open door; a version string alone is a WARN.
LEAK_PATTERNS: tuple[tuple[str, re.Pattern[str], bool], ...] = (
    ("a Python stack trace", re.compile(r"Traceback \(most recent call last\)"), True),
    ("a stack frame", re.compile(r"File \"/|File \"[A-Za-z]:\\\\|\bat [\w.$]+\([\w]+\.(java|kt|scala):\d+\)"), True),
    ("a package path", re.compile(r"(site|dist)-packages"), True),
    ("a server file path", re.compile(r"(?<![\w/])/(usr|home|opt|srv|app|root|var/lib|workspace)/[\w.\-/]+"), True),
    ("a Node stack frame", re.compile(r"\bat [\w.<>]+ \((/|node:)[^)]+:\d+:\d+\)"), True),
    (
        "a software version",
        re.compile(
            r"(?i)\b(python|uvicorn|fastapi|starlette|gunicorn|werkzeug|flask|django|aiohttp|express|torch|vllm|"
            r"transformers|nginx|openresty|apache)[/ ]v?\d+\.\d+(\.\d+)?"
        ),
        False,
    ),
)
VERSION_HEADERS = ("server", "x-powered-by")


def _malformed_probes(ctx: CheckContext) -> dict[str, bytes]:
    """Name -> raw body; each must be refused with 400/422."""
    good = generation_body(ctx, "Hi", max_tokens=1)
    return {
        "truncated JSON": b'{"model": "' + ctx.endpoint.model.encode() + b'", "messages": [{"role": "us',
        "temperature 'hot'": json.dumps({**good, "temperature": "hot"}).encode(),
        f"JSON nested {NESTING_DEPTH} deep": b'{"model": "x", "metadata": '
        + b"[" * NESTING_DEPTH
        + b"]" * NESTING_DEPTH
        + b"}",
    }


async def check_malformed(ctx: CheckContext, check: Check) -> CheckResult:
    """Broken JSON, a wrong type and absurd nesting must each get a 400/422, not a 500 and not a hang."""
    probes = _malformed_probes(ctx)
    answers = list(
        await asyncio.gather(
            *(send(ctx, "POST", api_path(ctx), data=body, timeout_s=MALFORMED_TIMEOUT_S) for body in probes.values())
        )
    )
    shown = [f"{what}: {evidence(ctx, r)}" for what, r in zip(probes, answers, strict=True)]
    if all(connect_failed(r) for r in answers):
        return check.error(unreachable_message(answers), shown)
    if any(r.status in (401, 403) for r in answers):
        return check.error("the key was refused, so the request parser could not be reached", shown)
    findings: list[tuple[CheckStatus, str]] = []
    for what, resp in zip(probes, answers, strict=True):
        if resp.status is None:
            findings.append((CheckStatus.FAIL, f"{what}: no answer ({resp.error})"))
        elif resp.status >= 500:
            findings.append((CheckStatus.FAIL, f"{what}: {resp.status}"))
        elif 200 <= resp.status < 300:
            findings.append((CheckStatus.WARN, f"{what}: accepted with {resp.status}"))
        elif resp.status not in CLEAN:
            findings.append((CheckStatus.WARN, f"{what}: {resp.status}, expected 400 or 422"))
    if findings:
        bad = worst([s for s, _ in findings])
        return check.result(
            bad,
            "; ".join(t for _, t in findings),
            value=len(probes) - len(findings),
            threshold=len(probes),
            unit="refused cleanly",
            evidence=shown,
        )
    return check.result(
        CheckStatus.PASS,
        f"all {len(probes)} malformed requests were refused with 400/422",
        value=len(probes),
        threshold=len(probes),
        unit="refused cleanly",
        evidence=shown,
    )


def scan_leaks(resp: ProbeResponse) -> list[tuple[str, bool, str]]:
    """(finding, serious, excerpt) for every leak pattern in `resp`'s body and version headers."""
    found = []
    text = resp.text
    for name, pattern, serious in LEAK_PATTERNS:
        match = pattern.search(text)
        if match:
            start = max(0, match.start() - 20)
            found.append((name, serious, " ".join(text[start : match.end() + 40].split())))
    for header in VERSION_HEADERS:
        value = resp.header(header)
        if value and re.search(r"\d+\.\d+", value):
            found.append((f"a version in the {header} header", False, f"{header}: {value}"))
    return found


async def check_error_leaks(ctx: CheckContext, check: Check) -> CheckResult:
    """No error answer may carry a stack trace, a server path or a software version.

    Provokes four errors of its own (unknown route, wrong method, broken JSON, a wrong
    type) and scans them with every error answer earlier security checks collected.
    """
    own = api_path(ctx)
    provoked = list(
        await asyncio.gather(
            send(ctx, "GET", f"/preflight-no-such-route-{uuid.uuid4().hex[:8]}"),
            send(ctx, "GET", own),
            send(ctx, "POST", own, data=b'{"model": ', timeout_s=MALFORMED_TIMEOUT_S),
            send(
                ctx,
                "POST",
                own,
                json_body={**generation_body(ctx, "Hi"), "max_tokens": "many"},
                timeout_s=MALFORMED_TIMEOUT_S,
            ),
        )
    )
    if unreachable(provoked):
        return check.error(unreachable_message(provoked), [evidence(ctx, r) for r in provoked])
    collected: list[ProbeResponse] = ctx.scratch.get(ERROR_ANSWERS, [])
    errors = [r for r in {id(r): r for r in [*collected, *provoked]}.values() if r.status and r.status >= 400]
    findings: list[tuple[CheckStatus, str]] = []
    shown: list[str] = []
    for resp in errors:
        for name, serious, excerpt in scan_leaks(resp):
            findings.append((ctx.open_door() if serious else CheckStatus.WARN, f"{name} in {resp.method} {resp.path}"))
            shown.append(redact(ctx, f"{resp.method} {resp.path} -> {resp.status}: {name}: …{excerpt}…"))
    summary = f"{len(errors)} error answers scanned ({len(errors) - len(provoked)} from earlier checks)"
    if findings:
        names = sorted({text for _, text in findings})
        return check.result(
            worst([s for s, _ in findings]),
            "error answers leak " + "; ".join(names[:6]),
            value=len(findings),
            threshold=0,
            unit="leaks",
            evidence=[summary, *shown[:12]],
        )
    return check.result(
        CheckStatus.PASS,
        f"{summary}: no stack trace, path or version",
        value=0,
        threshold=0,
        unit="leaks",
        evidence=[summary, *(evidence(ctx, r) for r in provoked)],
    )


MALFORMED = Check(
    "security.input.malformed",
    Category.SECURITY,
    "Malformed requests are refused with 400/422",
    check_malformed,
    LLM10,
    "Parse and validate request bodies before use (a schema with typed fields), cap JSON nesting, and map every "
    "parse or validation error to a 400 with a JSON error body.",
)
ERROR_LEAKS = Check(
    "security.error_leaks",
    Category.SECURITY,
    "Error answers leak no stack traces, paths or versions",
    check_error_leaks,
    LLM02,
    "Return generic JSON errors (OpenAI's error shape) and log the details server-side; turn off debug modes and "
    "version banners (uvicorn: --no-server-header).",
)
