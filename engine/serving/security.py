"""Who may call the server and how much: Host check, API key, rate limit, body size, access log.

All pure ASGI middleware (no BaseHTTPMiddleware, which breaks streaming and
disconnect detection). Each one answers with the OpenAI error shape.

- `HostCheckMiddleware` (only without a key): 400 unless the Host header is an
  IP address, `localhost`, the bound host or an `--allowed-host`. A DNS
  rebinding page reaches a loopback server under its own domain name, so
  that is the one thing refused; without a key nothing else would stop it.
- `AuthMiddleware`: with a key, every route but `/health` needs
  `Authorization: Bearer <key>`. Both sides are normalized by one rule
  (`normalize_api_key`), compared as SHA-256 digests in constant time, and a
  token longer than any valid key fails before hashing. Wrong keys are
  counted per client address; past `--auth-failure-limit` a minute the
  address gets 429 with `Retry-After` (before its key is looked at, so the
  429 tells a guesser nothing). A missing key is a plain 401: it guesses
  nothing. A key in the query string is not looked at; the key is never logged.
- `RateLimitMiddleware`: a token bucket per client address (a single shared
  key names no client, so keying by it made the limit global); 429 with an
  integer `Retry-After`.
- `BodyLimitMiddleware`: 413 for a body over the limit, by Content-Length
  or by counting a chunked body; small bodies are buffered and replayed.
- `AccessLogMiddleware`: method, path (no query string), status, duration.

Open connections are bounded by uvicorn's `limit_concurrency` (`--max-connections`),
set in `engine.serving.app`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.serving.errors import error_body
from engine.serving.options import MAX_API_KEY_CHARS, normalize_api_key

logger = logging.getLogger("preflight.server")

OPEN_PATHS = frozenset({"/health"})  # reachable without a key (load balancer probes)
UNLIMITED_PATHS = frozenset({"/health", "/metrics"})  # probes and scrapes are not rate limited
DRAIN_LIMIT_BYTES = 32 * 1024 * 1024  # read (and drop) up to this much of an oversized body, so the client sees 413
LOCAL_HOST_NAMES = frozenset({"localhost"})  # beside every IP literal, which no DNS rebinding can send


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


def client_address(scope: Scope) -> str:
    """The peer's IP address: the identity every per-client limit is keyed by."""
    return str((scope.get("client") or ("?", 0))[0])


def bearer_token(scope: Scope) -> str | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(b" ")
    return normalize_api_key(token.decode("latin-1")) if scheme.lower() == b"bearer" else None


def _key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("latin-1", errors="replace")).digest()


async def _retry_later(send: Send, wait_s: float, message: str, code: str) -> None:
    retry = str(max(1, math.ceil(wait_s)))
    await send_error(send, 429, f"{message}: retry after {retry} s", code, {"Retry-After": retry})


# ---- Host header (DNS rebinding) -------------------------------------------------------------


def host_name(value: bytes | None) -> str | None:
    """The name part of a Host header, lower case, without port or IPv6 brackets; None when malformed."""
    if value is None:
        return None
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        return inside if bracket and (not rest or (rest[0] == ":" and rest[1:].isdigit())) else None
    name, colon, port = text.rpartition(":")
    if not colon:
        return text or None
    return name if port.isdigit() and name and ":" not in name else None


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(value: bytes | None, names: frozenset[str]) -> bool:
    """An IP literal or one of `names` ('*' allows any well-formed Host)."""
    name = host_name(value)
    if name is None:
        return False
    return "*" in names or name in names or _is_ip_literal(name)


def allowed_host_names(bound_host: str, extra: Iterable[str]) -> frozenset[str]:
    """localhost, the name the server is bound to (an IP literal needs no entry) and the configured names."""
    return LOCAL_HOST_NAMES | {bound_host.strip("[]").lower()} | frozenset(extra)


class HostCheckMiddleware:
    def __init__(self, app: ASGIApp, names: frozenset[str]) -> None:
        self.app = app
        self.names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or host_allowed(_header(scope, b"host"), self.names):
            await self.app(scope, receive, send)
            return
        await send_error(
            send,
            400,
            "the Host header names no host this server answers to: use 127.0.0.1 or localhost, "
            "or start the server with --allowed-host NAME",
            "invalid_host",
        )


# ---- API key ---------------------------------------------------------------------------------


class AuthMiddleware:
    def __init__(self, app: ASGIApp, api_key: str, failures: TokenBucketLimiter) -> None:
        self.app = app
        self._digest = _key_digest(normalize_api_key(api_key))
        self.failures = failures  # one token per wrong key, per client address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        client = client_address(scope)
        wait_s = self.failures.wait_s(client)
        if wait_s > 0:
            await _retry_later(send, wait_s, "too many wrong API keys from this address", "too_many_auth_failures")
            return
        token = bearer_token(scope)
        if token is None or not self._matches(token):
            if token is not None:
                self.failures.acquire(client)
            why = "missing" if token is None else "invalid"
            await send_error(
                send,
                401,
                f"{why} API key: send the header 'Authorization: Bearer <key>'",
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            )
            return
        await self.app(scope, receive, send)

    def _matches(self, token: str) -> bool:
        if len(token) > MAX_API_KEY_CHARS:  # no configured key is this long: refuse without hashing
            return False
        return hmac.compare_digest(_key_digest(token), self._digest)


# ---- rate limits -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_s: float


class TokenBucketLimiter:
    """`rpm` tokens per minute per client, bursting to `burst`. Thread-safe, clock injectable.

    Buckets are kept in least-recently-updated order, and a bucket untouched for
    `burst / rate` seconds is full again, the same as no bucket: those are dropped
    from the front, each once. When `MAX_CLIENTS` buckets are all still refilling,
    a new client shares one overflow bucket instead of evicting anyone, so a flood
    of new addresses limits itself and never resets the limits of known clients.
    """

    MAX_CLIENTS = 10_000

    def __init__(self, rpm: int, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rpm < 1 or burst < 1:
            raise ValueError(f"rate limit needs rpm >= 1 and burst >= 1, got {rpm} and {burst}")
        self.rate_per_s = rpm / 60.0
        self.burst = burst
        self.full_after_s = burst / self.rate_per_s
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._overflow: _Bucket | None = None
        self._lock = threading.Lock()

    def acquire(self, client: str) -> float:
        """0 when allowed (a token is taken); else seconds until the next token."""
        with self._lock:
            now = self._clock()
            bucket = self._refilled(client, now)
            if bucket is None:
                bucket = self._buckets[client] = _Bucket(float(self.burst), now)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return self._wait(bucket)

    def wait_s(self, client: str) -> float:
        """Seconds until `client` could take a token (0: now), without taking one or adding a bucket."""
        with self._lock:
            bucket = self._refilled(client, self._clock())
            return 0.0 if bucket is None or bucket.tokens >= 1.0 else self._wait(bucket)

    @property
    def clients(self) -> int:
        return len(self._buckets)

    def _wait(self, bucket: _Bucket) -> float:
        return (1.0 - bucket.tokens) / self.rate_per_s

    def _refilled(self, client: str, now: float) -> _Bucket | None:
        """The client's bucket refilled to `now`, or the overflow bucket when the table is full of refilling
        ones; None for a client without a bucket, which is the same as a full one."""
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            if now - oldest.updated_s < self.full_after_s:
                break
            self._buckets.popitem(last=False)
        bucket = self._buckets.get(client)
        if bucket is not None:
            self._buckets.move_to_end(client)
        elif len(self._buckets) >= self.MAX_CLIENTS:
            bucket = self._overflow = self._overflow or _Bucket(float(self.burst), now)
        else:
            return None
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated_s) * self.rate_per_s)
        bucket.updated_s = now
        return bucket


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, limiter: TokenBucketLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        wait_s = self.limiter.acquire(client_address(scope))
        if wait_s > 0:
            await _retry_later(send, wait_s, "rate limit exceeded", "rate_limit_exceeded")
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
            client = client_address(scope)
            path = scope["path"][:200].encode("unicode_escape").decode("ascii")  # no log injection
            logger.info(
                '%s "%s %s" %s %.1f ms',
                client,
                scope["method"],
                path,
                status or "-",
                (time.perf_counter() - t0) * 1000,
            )
