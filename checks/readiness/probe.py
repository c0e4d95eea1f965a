"""One bounded HTTP request for a readiness probe, and what came back, kept as evidence.

Probes talk to endpoints we do not trust, so every request has a deadline and every
body is read up to a cap; a connection error or a timeout is data (`error`), not an
exception. Evidence strings never contain the API key: they name how the request was
authenticated ("no key", "wrong key", "the key"), not with what.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from checks.load.endpoint import Endpoint, root_url

MAX_BODY_BYTES = 64 * 1024
DEFAULT_TIMEOUT_S = 15.0
Auth = Literal["key", "none", "wrong", "query"]
WRONG_KEY = "preflight-wrong-key-0000000000000000"
AUTH_WORDS = {"key": "the key", "none": "no key", "wrong": "a wrong key", "query": "the key in the query string"}


@dataclass(slots=True)
class ProbeResponse:
    """Status, headers and the first MAX_BODY_BYTES of the body; or the transport error and no status."""

    method: str
    path: str
    auth: Auth
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    truncated: bool = False
    elapsed_s: float = 0.0
    error: str | None = None  # "timeout after 15 s", "connection refused", ...

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON (or was cut off)."""
        if self.truncated:
            return None
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            return None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def evidence(self, excerpt_chars: int = 120) -> str:
        """'POST /v1/models (no key) -> 401 in 3 ms: {"error": ...}' - one line for a report."""
        head = f"{self.method} {self.path} ({AUTH_WORDS[self.auth]})"
        if self.status is None:
            return f"{head} -> {self.error or 'no answer'}"
        body = " ".join(self.text.split())
        if len(body) > excerpt_chars:
            body = body[: excerpt_chars - 1] + "…"
        return f"{head} -> {self.status} in {self.elapsed_s * 1000:.0f} ms" + (f": {body}" if body else "")


def _headers(endpoint: Endpoint, auth: Auth, extra: dict[str, str] | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if auth == "key" and endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    elif auth == "wrong":
        headers["Authorization"] = f"Bearer {WRONG_KEY}"
    headers.update(extra or {})
    return headers


async def request(
    endpoint: Endpoint,
    method: str,
    path: str,
    *,
    auth: Auth = "key",
    json_body: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> ProbeResponse:
    """Send one request to `endpoint`'s server root + `path`; never raises for what the server does."""
    url = root_url(endpoint.base_url) + path
    params = {"api_key": endpoint.api_key or "", "key": endpoint.api_key or ""} if auth == "query" else None
    body = data if data is not None else (None if json_body is None else json.dumps(json_body).encode())
    send_headers = _headers(endpoint, auth, headers)
    if body is not None and not any(h.lower() == "content-type" for h in send_headers):
        send_headers["Content-Type"] = "application/json"
    out = ProbeResponse(method, path, auth, None)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    start = time.perf_counter()
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(method, url, data=body, headers=send_headers, params=params, allow_redirects=False) as resp,
        ):
            out.status = resp.status
            out.headers = {k.lower(): v for k, v in resp.headers.items()}
            chunks, size = [], 0
            async for chunk in resp.content.iter_chunked(16384):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_body_bytes:
                    out.truncated = True
                    break
            out.body = b"".join(chunks)[:max_body_bytes]
    except TimeoutError:
        out.error = f"timeout after {timeout_s:g} s"
    except (aiohttp.ClientError, OSError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    except asyncio.CancelledError:
        raise
    out.elapsed_s = time.perf_counter() - start
    return out


def tiny_request(endpoint: Endpoint, max_tokens: int = 1) -> tuple[str, dict[str, Any]]:
    """The path and body of the cheapest real generation request on `endpoint`'s API."""
    if endpoint.api == "chat":
        body = {"model": endpoint.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens}
        return "/v1/chat/completions", body
    return "/v1/completions", {"model": endpoint.model, "prompt": "Hi", "max_tokens": max_tokens}
