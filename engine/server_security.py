"""Who may call the server and how much: API key, rate limit, body size, access log.

All pure ASGI middleware (no BaseHTTPMiddleware, which breaks streaming and
disconnect detection). Each one answers with the OpenAI error shape.

- `AuthMiddleware`: with a key, every route but `/health` needs
  `Authorization: Bearer <key>`, compared in constant time; a key in the
  query string is not looked at. The key is never logged.
- `RateLimitMiddleware`: a token bucket per API key (per client IP when no
  key is set); 429 with an integer `Retry-After`.
- `BodyLimitMiddleware`: 413 for a body over the limit, by Content-Length
  or by counting a chunked body; small bodies are buffered and replayed.
- `AccessLogMiddleware`: method, path (no query string), status, duration.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import threading
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.server_errors import error_body

logger = logging.getLogger("preflight.server")

OPEN_PATHS = frozenset({"/health"})  # reachable without a key (load balancer probes)
UNLIMITED_PATHS = frozenset({"/health", "/metrics"})  # probes and scrapes are not rate limited
DRAIN_LIMIT_BYTES = 32 * 1024 * 1024  # read (and drop) up to this much of an oversized body, so the client sees 413


async def send_error(send: Send, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(status, message, code)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def bearer_token(scope: Scope) -> bytes | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else None


class AuthMiddleware:
    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is None or not hmac.compare_digest(token, self._key):
            why = "missing" if token is None else "invalid"
            await send_error(
                send, 401, f"{why} API key: send the header 'Authorization: Bearer <key>'", "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
            return
        await self.app(scope, receive, send)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_s: float


class TokenBucketLimiter:
    """`rpm` requests per minute per client, bursting to `burst`. Thread-safe, clock injectable."""

    MAX_CLIENTS = 10_000

    def __init__(self, rpm: int, burst: int, clock: object = time.monotonic) -> None:
        if rpm < 1 or burst < 1:
            raise ValueError(f"rate limit needs rpm >= 1 and burst >= 1, got {rpm} and {burst}")
        self.rate_per_s = rpm / 60.0
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, client: str) -> float:
        """0 when allowed (a token is taken); else seconds until the next token."""
        now = self._clock()  # type: ignore[operator]
        with self._lock:
            bucket = self._buckets.get(client)
            if bucket is None:
                if len(self._buckets) >= self.MAX_CLIENTS:
                    self._prune(now)
                bucket = self._buckets[client] = _Bucket(float(self.burst), now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated_s) * self.rate_per_s)
            bucket.updated_s = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate_per_s

    def _prune(self, now: float) -> None:
        full_after_s = self.burst / self.rate_per_s
        stale = [k for k, b in self._buckets.items() if now - b.updated_s >= full_after_s]
        for key in stale:
            del self._buckets[key]
        if len(self._buckets) >= self.MAX_CLIENTS:
            self._buckets.clear()


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, limiter: TokenBucketLimiter, per_key: bool) -> None:
        self.app = app
        self.limiter = limiter
        self.per_key = per_key  # only when a key is enforced: otherwise made-up keys would dodge the limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope) if self.per_key else None
        client = ("key:" + token.decode("latin-1")) if token else "ip:" + (scope.get("client") or ("?", 0))[0]
        wait_s = self.limiter.acquire(client)
        if wait_s > 0:
            retry = str(max(1, math.ceil(wait_s)))
            await send_error(
                send, 429, f"rate limit exceeded: retry after {retry} s", "rate_limit_exceeded", {"Retry-After": retry}
            )
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            if declared.isdigit() and int(declared) <= DRAIN_LIMIT_BYTES:
                await _drain(receive, DRAIN_LIMIT_BYTES)
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await _drain(receive, DRAIN_LIMIT_BYTES - size)
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        await send_error(
            send, 413, f"request body is larger than {self.max_bytes} bytes (--max-body-bytes)", "request_too_large"
        )


async def _drain(receive: Receive, budget: int) -> None:
    """Read and drop the rest of a body (up to `budget` bytes) so the client can read our answer."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class AccessLogMiddleware:
    """One line per request without the query string, headers or body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            client = (scope.get("client") or ("-", 0))[0]
            path = scope["path"][:200].encode("unicode_escape").decode("ascii")  # no log injection
            logger.info(
                '%s "%s %s" %s %.1f ms', client, scope["method"], path, status or "-",
                (time.perf_counter() - t0) * 1000,
            )  # fmt: skip
