"""A fake OpenAI-compatible server with planted faults, for testing the readiness checks.

`tests/fault_server.py` plants transport faults for the load generator's client, byte by
byte. This one plants *deployment* faults, one flag each, into a server that otherwise
behaves the way a careful deployment should, so every readiness check can be shown to
PASS on the clean server and to catch its fault (FAIL or WARN, never a false PASS):

    with PlantedServer(Faults(no_auth=True)) as server:
        ...  # server.base_url, server.api_key, server.log_path

Correct by default:
- `Authorization: Bearer <api_key>` on every `/v1/*` route and `/metrics`; 401 otherwise.
  `/health` is open: 200 when ready, 503 while "loading" (`ready=False`).
- A token bucket (`rate_limit_rpm`, `rate_limit_burst`) on the generation routes: 429 with
  `Retry-After`.
- Bodies over `max_body_bytes` get 413, read no further than the limit.
- Malformed JSON, wrong types and JSON nested deeper than 32 levels get 400; prompt +
  max_tokens over `max_model_len` get 400. Error bodies are OpenAI-shaped and say nothing
  about the implementation.
- `max_running` requests generate at once, `max_queue` more wait; beyond that, 503.
- No CORS headers, no `/docs`, no `/openapi.json`; the log (`log_path`) records method,
  path and status, never prompts.
- `/metrics` in Prometheus text with `preflight:` names: requests running and waiting, KV
  cache usage (each running request holds ceil(tokens / 16) of `kv_blocks` blocks),
  prompt and generation token counters, TTFT and E2E histograms. A client that
  disconnects frees its slot and blocks at once.
Generation: tokens are words. A reply is `max_tokens` x "tok" (chat or completions,
streamed as SSE with `token_delay_s` between tokens, usage chunk on request, `[DONE]`),
cut short by nothing: the server ignores EOS, as `ignore_eos` asks.

The server is Starlette under a real uvicorn on 127.0.0.1 in a daemon thread
(`tests.server_harness.in_process_server`).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.server_harness import in_process_server

MODEL = "planted-model"
MAX_JSON_DEPTH = 32
KV_BLOCK_TOKENS = 16
FAKE_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/usr/lib/python3.11/site-packages/planted/handlers.py", line 88, in create_completion\n'
    "    body = json.loads(raw)\n"
    "json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)\n"
    "planted-server 0.4.2 (Python/3.11.7 uvicorn/0.30.1)"
)


@dataclass(frozen=True, slots=True)
class Faults:
    """One flag per planted fault; all off is a deployment that should pass every check."""

    no_auth: bool = False  # any key, or none, is accepted everywhere
    key_in_query: bool = False  # ?api_key=KEY (or ?key=KEY) is accepted in place of the header
    error_500_on_bad_json: bool = False  # malformed or over-nested JSON gets a 500 instead of a 400
    stack_traces: bool = False  # error bodies carry a Python traceback, file paths and versions
    cors_wildcard_credentials: bool = False  # any Origin is reflected with Allow-Credentials: true
    no_body_limit: bool = False  # bodies of any size are read and accepted
    no_rate_limit: bool = False  # never 429
    docs_exposed: bool = False  # /docs and /openapi.json answer 200
    canary_leak: bool = False  # a reply starts by repeating the system prompt
    log_prompts: bool = False  # prompts are written to the log
    health_always_ok: bool = False  # /health 200 even while generation answers 503 (not ready)
    no_metrics: bool = False  # /metrics is 404
    kv_leak_on_cancel: bool = False  # a disconnected stream keeps its slot and KV blocks forever


class _Reject(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, counted iteratively and stopping once past `limit`."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


class _Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.running = Gauge("preflight:num_requests_running", "Requests generating.", registry=r)
        self.waiting = Gauge("preflight:num_requests_waiting", "Requests waiting for a slot.", registry=r)
        self.kv_usage = Gauge("preflight:kv_cache_usage_perc", "Fraction of KV blocks held (0..1).", registry=r)
        self.prompt_tokens = Counter("preflight:prompt_tokens", "Prompt tokens admitted.", registry=r)
        self.generation_tokens = Counter("preflight:generation_tokens", "Tokens generated.", registry=r)
        self.ttft = Histogram("preflight:time_to_first_token_seconds", "TTFT.", registry=r)
        self.e2e = Histogram("preflight:e2e_request_latency_seconds", "E2E latency.", registry=r)


class PlantedServer:
    """The planted-fault server; use as a context manager (see the module docstring)."""

    def __init__(
        self,
        faults: Faults | None = None,
        *,
        api_key: str = "planted-key",
        rate_limit_rpm: int = 60,
        rate_limit_burst: int = 10,
        max_body_bytes: int = 64 * 1024,
        max_model_len: int = 2048,
        max_running: int = 4,
        max_queue: int = 8,
        kv_blocks: int = 256,
        token_delay_s: float = 0.01,
        ready: bool = True,
        log_path: Path | None = None,
    ) -> None:
        self.faults = faults or Faults()
        self.api_key = api_key
        self.rate_limit_rpm, self.rate_limit_burst = rate_limit_rpm, rate_limit_burst
        self.max_body_bytes, self.max_model_len = max_body_bytes, max_model_len
        self.max_running, self.max_queue, self.kv_blocks = max_running, max_queue, kv_blocks
        self.token_delay_s = token_delay_s
        self.ready = ready
        self.log_path = log_path
        self.base_url = ""
        self.metrics = _Metrics()
        self._tokens = float(rate_limit_burst)
        self._refilled = time.monotonic()
        self._running = 0
        self._waiting = 0
        self._blocks_held = 0
        self._slot_free: asyncio.Condition | None = None
        self._stack = ExitStack()
        self.app = Starlette(routes=self._routes())
        self.app.add_middleware(_Outer, server=self)

    # --- lifecycle ---
    def __enter__(self) -> PlantedServer:
        self.base_url, _thread = self._stack.enter_context(in_process_server(self.app))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _routes(self) -> list[Route]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics_route, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/docs", self.docs, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]

    # --- the rules every route shares ---
    def log(self, line: str) -> None:
        if self.log_path is not None:
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(line.rstrip("\n") + "\n")

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        body: dict[str, Any] = {"error": {"message": message, "type": "invalid_request_error", "code": status}}
        if self.faults.stack_traces:
            body["error"]["traceback"] = FAKE_TRACEBACK
        return JSONResponse(body, status_code=status, headers=headers)

    def check_auth(self, request: Request) -> None:
        if self.faults.no_auth:
            return
        if request.headers.get("authorization", "") == f"Bearer {self.api_key}":
            return
        query_key = request.query_params.get("api_key") or request.query_params.get("key")
        if self.faults.key_in_query and query_key == self.api_key:
            return
        raise _Reject(401, "invalid or missing API key")

    def check_rate(self) -> None:
        if self.faults.no_rate_limit:
            return
        now = time.monotonic()
        per_s = self.rate_limit_rpm / 60.0
        self._tokens = min(float(self.rate_limit_burst), self._tokens + (now - self._refilled) * per_s)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return
        wait = math.ceil((1 - self._tokens) / per_s)
        raise _Reject(429, "rate limit exceeded", {"Retry-After": str(wait)})

    async def read_json(self, request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if not self.faults.no_body_limit and declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _Reject(413, f"request body over {self.max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes and not self.faults.no_body_limit:
                raise _Reject(413, f"request body over {self.max_body_bytes} bytes")
            chunks.append(chunk)
        bad = 500 if self.faults.error_500_on_bad_json else 400
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, RecursionError):
            raise _Reject(bad, "the body is not valid JSON") from None
        if _depth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            raise _Reject(bad, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        if not isinstance(body, dict):
            raise _Reject(400, "the body must be a JSON object")
        return body

    # --- routes ---
    async def health(self, request: Request) -> Response:
        if self.ready or self.faults.health_always_ok:
            return PlainTextResponse("ok")
        return self.error(503, "the model is loading")

    async def metrics_route(self, request: Request) -> Response:
        if self.faults.no_metrics:
            return self.error(404, "not found")
        self.check_auth(request)
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def models(self, request: Request) -> Response:
        self.check_auth(request)
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "planted"}]})

    async def docs(self, request: Request) -> Response:
        if not self.faults.docs_exposed:
            return self.error(404, "not found")
        return HTMLResponse("<html><head><title>Swagger UI</title></head><body>planted API docs</body></html>")

    async def openapi(self, request: Request) -> Response:
        if not self.faults.docs_exposed:
            return self.error(404, "not found")
        return JSONResponse({"openapi": "3.1.0", "info": {"title": "planted", "version": "0.4.2"}, "paths": {}})

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def _generate(self, request: Request, chat: bool) -> Response:
        self.check_auth(request)
        self.check_rate()
        body = await self.read_json(request)
        prompt, system = self._prompt(body, chat)
        max_tokens = body.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise _Reject(400, "max_tokens must be a positive integer")
        temperature = body.get("temperature", 1.0)
        if not isinstance(temperature, int | float) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
            raise _Reject(400, "temperature must be a number from 0 to 2")
        n_prompt = len(prompt.split())
        if n_prompt + max_tokens > self.max_model_len:
            raise _Reject(
                400,
                f"maximum context length is {self.max_model_len} tokens; asked for "
                f"{n_prompt} prompt + {max_tokens} output tokens",
            )
        if not self.ready:
            raise _Reject(503, "the model is loading")
        if self.faults.log_prompts:
            self.log(f"prompt: {prompt}")
        words = ["tok"] * max_tokens
        if self.faults.canary_leak and system:
            words = (system.split() + words)[:max_tokens]
        await self._admit()
        self.metrics.prompt_tokens.inc(n_prompt)
        run = _Run(self, n_prompt)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if body.get("stream"):
            return _ClosingStream(run.stream(words, chat, include_usage), run.close)
        try:
            for _ in words:
                await run.next_token()
            run.finished = True
        finally:
            run.close()
        text = " ".join(words)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": len(words), "total_tokens": n_prompt + len(words)}
        choice = {
            "index": 0,
            "finish_reason": "length",
            **({"message": {"role": "assistant", "content": text}} if chat else {"text": text}),
        }
        return JSONResponse(
            {
                "id": "planted-1",
                "object": "chat.completion" if chat else "text_completion",
                "model": MODEL,
                "choices": [choice],
                "usage": usage,
            }
        )

    def _prompt(self, body: dict[str, Any], chat: bool) -> tuple[str, str | None]:
        if not isinstance(body.get("model"), str):
            raise _Reject(400, "model must be a string")
        if not chat:
            if not isinstance(body.get("prompt"), str):
                raise _Reject(400, "prompt must be a string")
            return body["prompt"], None
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _Reject(400, "messages must be a non-empty list")
        texts, system = [], None
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
                raise _Reject(400, "each message needs a string role and content")
            if m["role"] == "system":
                system = m["content"]
            texts.append(m["content"])
        return " ".join(texts), system

    # --- slots, KV blocks and the stream ---
    async def _admit(self) -> None:
        if self._slot_free is None:
            self._slot_free = asyncio.Condition()
        if self._running >= self.max_running and self._waiting >= self.max_queue:
            raise _Reject(503, "the waiting queue is full; retry later")
        async with self._slot_free:
            self._waiting += 1
            self.metrics.waiting.set(self._waiting)
            try:
                await self._slot_free.wait_for(lambda: self._running < self.max_running)
            finally:
                self._waiting -= 1
                self.metrics.waiting.set(self._waiting)
            self._running += 1
            self.metrics.running.set(self._running)

    def hold(self, blocks: int) -> None:
        self._blocks_held += blocks
        self.metrics.kv_usage.set(min(1.0, self._blocks_held / self.kv_blocks))

    def release(self, blocks: int, cancelled: bool) -> None:
        """Free a finished request's slot and blocks; a cancelled one keeps both under kv_leak_on_cancel."""
        if cancelled and self.faults.kv_leak_on_cancel:
            return
        self._running -= 1
        self.metrics.running.set(self._running)
        self.hold(-blocks)
        if self._slot_free is not None:
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        assert self._slot_free is not None
        async with self._slot_free:
            self._slot_free.notify_all()


class _Run:
    """One admitted request: its KV blocks grow with its tokens; `close()` frees them exactly once."""

    def __init__(self, server: PlantedServer, n_prompt: int) -> None:
        self.server, self.n_prompt = server, n_prompt
        self.start = time.monotonic()
        self.sent = 0
        self.held = math.ceil(n_prompt / KV_BLOCK_TOKENS)
        self.finished = False
        self.closed = False
        server.hold(self.held)

    async def next_token(self) -> None:
        await asyncio.sleep(self.server.token_delay_s)  # the fake model's decode time for one token
        self.sent += 1
        need = math.ceil((self.n_prompt + self.sent) / KV_BLOCK_TOKENS)
        if need > self.held:
            self.server.hold(need - self.held)
            self.held = need
        if self.sent == 1:
            self.server.metrics.ttft.observe(time.monotonic() - self.start)
        self.server.metrics.generation_tokens.inc()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.finished:
            self.server.metrics.e2e.observe(time.monotonic() - self.start)
        self.server.release(self.held, cancelled=not self.finished)

    async def stream(self, words: list[str], chat: bool, include_usage: bool) -> AsyncIterator[str]:
        if chat:
            yield _sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        for word in words:
            await self.next_token()
            delta = {"delta": {"content": word + " "}} if chat else {"text": word + " "}
            yield _sse({"choices": [{"index": 0, **delta}]})
        end = {"delta": {}} if chat else {"text": ""}
        yield _sse({"choices": [{"index": 0, **end, "finish_reason": "length"}]})
        if include_usage:
            usage = {
                "prompt_tokens": self.n_prompt,
                "completion_tokens": self.sent,
                "total_tokens": self.n_prompt + self.sent,
            }
            yield _sse({"choices": [], "usage": usage})
        self.finished = True
        yield "data: [DONE]\n\n"


class _ClosingStream(StreamingResponse):
    """SSE that always runs `on_close`, even when the client left before the first byte."""

    def __init__(self, content: AsyncIterator[str], on_close: Any) -> None:
        super().__init__(content, media_type="text/event-stream")
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


class _Outer:
    """CORS (or its planted absence of sense), rejections as OpenAI errors, and the access log."""

    def __init__(self, app: Any, server: PlantedServer) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        server = self.server
        request = Request(scope, receive)
        origin = request.headers.get("origin")
        cors = {}
        if origin and server.faults.cors_wildcard_credentials:
            cors = {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Credentials": "true",
                "Access-Control-Allow-Methods": "*",
                "Access-Control-Allow-Headers": "*",
            }
        if scope["method"] == "OPTIONS" and cors:
            response: Response = PlainTextResponse("", headers=cors)
            await response(scope, receive, send)
            return
        status_seen: list[int] = []

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in cors.items()]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except _Reject as rej:
            await server.error(rej.status, rej.message, rej.headers)(scope, receive, send_wrapper)
        server.log(f"{scope['method']} {scope['path']} {status_seen[0] if status_seen else '-'}")


def planted(faults: Faults | None = None, **options: Any) -> Iterator[PlantedServer]:
    """For fixtures: `yield from planted(Faults(...), log_path=tmp_path / "log")`."""
    with PlantedServer(faults, **options) as server:
        yield server
