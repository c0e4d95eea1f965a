"""Small real HTTP servers on 127.0.0.1 that misbehave on purpose, for testing the load generator's client.

STYLE.md §8: planted faults are real servers, not transport stubs. Each one is
asyncio streams with hand-written HTTP/1.1, so every byte and every pause is
under the test's control, running on its own event loop in a daemon thread:

    with FaultServer(Script(Behaviour.HTTP_STATUS, status=429)) as server:
        ...  # point the client at server.base_url; then look at server.requests

Every answer carries `Connection: close` and the connection is closed after it
(no keep-alive). `GET /health` is 200 and `GET /v1/models` lists one model,
"fault-model", whatever the behaviour (until DIE_AFTER_N has died). The
behaviour applies to `POST /v1/chat/completions` and `POST /v1/completions`
("completion requests", counted from 1):

- OK_STREAM: a well-formed OpenAI SSE stream in chunked transfer encoding. An
  opening chunk without content (role-only for chat, empty text for
  completions), `chunks` content chunks of `tokens_per_chunk` x "tok " each,
  each after a `chunk_delay_s` pause, a chunk with finish_reason "length",
  the usage chunk (`choices: []`) when the request asked for
  stream_options.include_usage (after `usage_delay_s`), then `data: [DONE]`.
  A request with `stream` false gets one JSON answer instead.
- HTTP_500_EVERY_K: completion request k, 2k, ... gets a 500 with an
  OpenAI-shaped JSON error body; the others are OK_STREAM.
- HTTP_STATUS: every completion request gets `status` with an OpenAI-shaped
  JSON error body (429 adds `Retry-After: 1`), or with `HOSTILE_PAGE` (HTML
  holding terminal escape codes) when `html_error` is set.
- GARBAGE_SSE: 200 text/event-stream whose data lines are not JSON, then [DONE].
- NOT_SSE: 200 text/html with an HTML page.
- ERROR_EVENT: 200 stream: opening chunk, `chunks_before_fault` content chunks,
  then `data: {"error": {...}}`, then the end of the body (no [DONE]).
- EMPTY_STREAM: 200 stream with the opening chunk and [DONE], no content.
- SLOW_FIRST_BYTE: waits `first_byte_delay_s` before the status line, then OK_STREAM.
- STALL: status line and headers, then nothing for `stall_s`, then a close.
- DIE_AFTER_N: the first `ok_requests` completion requests are OK_STREAM; after
  that every connection (new, or one carrying a later completion request) is
  reset at once, GETs included, as if the server had died mid-run.
- DROP_MID_STREAM: opening chunk and `chunks_before_fault` content chunks, then
  the socket is closed without the terminating zero-length chunk.
- ENDLESS_LINE: 200 stream whose body is `data: ` and then `line_bytes` bytes of
  "x" with no line end, in 64 KiB HTTP chunks, then the end of the body: a hostile
  server that never lets an event end.
- DEEP_NESTING: 200 stream: opening chunk, then one event whose data is a JSON array
  nested `depth` levels deep (`[[[...]]]`), then [DONE].

The fault behaviours other than HTTP_500_EVERY_K, SLOW_FIRST_BYTE and
DIE_AFTER_N answer the same way whether or not the request set `stream`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus
from typing import Any, NamedTuple

MODEL = "fault-model"
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
TOKEN = "tok "
START_DEADLINE_S = 10.0
STOP_DEADLINE_S = 10.0
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
GARBAGE_EVENTS = ("this is not json", '{"choices": [{"delta": {"content": "tok', "<html><body>oops</body></html>")
HTML_PAGE = "<!DOCTYPE html><html><head><title>Gateway</title></head><body><h1>Welcome</h1></body></html>"
HOSTILE_PAGE = "<html><body>\x1b[2J\x1b]0;owned\x07Bad gateway</body></html>"  # clears a terminal, retitles it


class Behaviour(StrEnum):
    """How completion requests are answered; see the module docstring."""

    OK_STREAM = "ok_stream"
    HTTP_500_EVERY_K = "http_500_every_k"
    HTTP_STATUS = "http_status"
    GARBAGE_SSE = "garbage_sse"
    NOT_SSE = "not_sse"
    ERROR_EVENT = "error_event"
    EMPTY_STREAM = "empty_stream"
    SLOW_FIRST_BYTE = "slow_first_byte"
    STALL = "stall"
    DIE_AFTER_N = "die_after_n"
    DROP_MID_STREAM = "drop_mid_stream"
    ENDLESS_LINE = "endless_line"
    DEEP_NESTING = "deep_nesting"


@dataclass(frozen=True, slots=True)
class Script:
    """A behaviour and its knobs; each knob is read only by the behaviours named beside it."""

    behaviour: Behaviour = Behaviour.OK_STREAM
    chunks: int = 4  # content chunks of a well-formed stream
    tokens_per_chunk: int = 1  # "tok " repeated this many times in each content chunk
    chunk_delay_s: float = 0.0  # pause before each content chunk (all streams)
    usage_delay_s: float = 0.0  # pause before the usage chunk
    every_k: int = 2  # HTTP_500_EVERY_K
    status: int = 500  # HTTP_STATUS
    html_error: bool = False  # HTTP_STATUS
    first_byte_delay_s: float = 1.0  # SLOW_FIRST_BYTE
    stall_s: float = 60.0  # STALL
    ok_requests: int = 1  # DIE_AFTER_N
    chunks_before_fault: int = 2  # ERROR_EVENT, DROP_MID_STREAM
    line_bytes: int = 50 * 2**20  # ENDLESS_LINE
    depth: int = 100_000  # DEEP_NESTING

    def __post_init__(self) -> None:
        for name in ("chunks", "tokens_per_chunk", "ok_requests", "chunks_before_fault", "line_bytes", "depth"):
            if getattr(self, name) < 0:
                raise ValueError(f"Script.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("chunk_delay_s", "usage_delay_s", "first_byte_delay_s", "stall_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"Script.{name} must be >= 0 seconds, got {getattr(self, name)}")
        if self.every_k < 1:
            raise ValueError(f"Script.every_k must be >= 1, got {self.every_k}")
        if not 100 <= self.status <= 599:
            raise ValueError(f"Script.status must be an HTTP status (100-599), got {self.status}")


class ReceivedRequest(NamedTuple):
    """One request as the server read it: header names lower-cased; body parsed JSON (raw text if not JSON)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


def error_body(status: int, message: str) -> dict[str, Any]:
    """An OpenAI-shaped error object."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def _prompt_tokens(body: dict[str, Any]) -> int:
    """Whitespace words of the prompt (or the length of a token-id prompt): a stand-in tokenizer."""
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return len(prompt)
    if isinstance(prompt, str):
        return len(prompt.split())
    messages = body.get("messages") or []
    return sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))


def _sse(data: str) -> bytes:
    payload = f"data: {data}\n\n".encode()
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"  # one SSE event per HTTP chunk


class _Completion:
    """The JSON pieces of one completion answer for the chat or completions API."""

    def __init__(self, path: str, body: dict[str, Any], script: Script, number: int) -> None:
        self.chat = path == CHAT_PATH
        self.head = {
            "id": f"{'chatcmpl' if self.chat else 'cmpl'}-fault-{number}",
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": int(time.time()),
            "model": MODEL,
        }
        self.text = TOKEN * script.tokens_per_chunk
        completion_tokens = script.chunks * script.tokens_per_chunk
        prompt_tokens = _prompt_tokens(body)
        self.usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        self.full_text = self.text * script.chunks

    def chunk(self, choice: dict[str, Any]) -> str:
        return json.dumps({**self.head, "choices": [{"index": 0, **choice}]})

    def opening(self) -> str:
        return self.chunk({"delta": {"role": "assistant"}} if self.chat else {"text": ""})

    def content(self) -> str:
        return self._choice(self.text, None)

    def finish(self) -> str:
        return self._choice(None, "length")

    def _choice(self, text: str | None, finish_reason: str | None) -> str:
        """Chat puts the text in `delta` (empty at the finish), the completions API in `text`."""
        piece = {"delta": {} if text is None else {"content": text}} if self.chat else {"text": text or ""}
        return self.chunk({**piece, "finish_reason": finish_reason})

    def usage_chunk(self) -> str:
        return json.dumps({**self.head, "choices": [], "usage": self.usage})

    def whole(self) -> dict[str, Any]:
        """The non-streamed answer."""
        text = self.full_text
        piece = {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}
        kind = "chat.completion" if self.chat else "text_completion"
        return {
            **self.head,
            "object": kind,
            "choices": [{"index": 0, **piece, "finish_reason": "length"}],
            "usage": self.usage,
        }


class FaultServer:
    """A misbehaving OpenAI-compatible server on a free 127.0.0.1 port, for the life of a `with` block."""

    def __init__(self, script: Script | Behaviour = Behaviour.OK_STREAM) -> None:
        self.script = script if isinstance(script, Script) else Script(script)
        self.port: int | None = None
        self._requests: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        self._completions = 0  # completion requests received; touched only on the server's loop
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("FaultServer is not running; use it in a `with` block")
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[ReceivedRequest]:
        """A copy of every request read so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def __enter__(self) -> FaultServer:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="fault-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_DEADLINE_S):
            raise RuntimeError(f"fault server did not start within {START_DEADLINE_S} s")
        if self._start_error is not None:
            raise RuntimeError(f"fault server could not start: {self._start_error}") from self._start_error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(STOP_DEADLINE_S)
            if self._thread.is_alive():
                raise RuntimeError(f"fault server did not stop within {STOP_DEADLINE_S} s")

    async def _main(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
        except Exception as exc:  # handed to __enter__, which raises it in the test's thread
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stopping.wait()
        server.close()
        pending = list(self._tasks)
        for task in pending:
            task.cancel()  # stalled and slow answers end now
        await asyncio.gather(*pending, return_exceptions=True)
        await server.wait_closed()

    def _dead(self) -> bool:
        s = self.script
        return s.behaviour is Behaviour.DIE_AFTER_N and self._completions >= s.ok_requests

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if self._dead():
                _reset(writer)
                return
            try:
                request = await _read_request(reader)
            except ValueError as exc:
                await _send_json(writer, 400, error_body(400, f"malformed HTTP request: {exc}"))
                return
            if request is None:
                return  # the client connected and closed without a request
            with self._lock:
                self._requests.append(request)
            await self._answer(request, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            return  # the client went away (its timeout fired, say): there is no one left to answer
        finally:
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def _answer(self, request: ReceivedRequest, writer: asyncio.StreamWriter) -> None:
        method, path, _, body = request
        if method == "GET" and path == "/health":
            await _send_json(writer, 200, {"status": "ok"})
        elif method == "GET" and path == "/v1/models":
            model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "preflight-tests"}
            await _send_json(writer, 200, {"object": "list", "data": [model]})
        elif method == "POST" and path in (CHAT_PATH, COMPLETIONS_PATH):
            if not isinstance(body, dict):
                await _send_json(writer, 400, error_body(400, "the request body must be a JSON object"))
                return
            self._completions += 1
            await self._complete(_Completion(path, body, self.script, self._completions), body, writer)
        else:
            await _send_json(writer, 404, error_body(404, f"no route for {method} {path}"))

    async def _complete(self, answer: _Completion, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        s, b, n = self.script, self.script.behaviour, self._completions
        if b is Behaviour.SLOW_FIRST_BYTE:
            await asyncio.sleep(s.first_byte_delay_s)
        if b is Behaviour.DIE_AFTER_N and n > s.ok_requests:
            _reset(writer)
        elif b is Behaviour.HTTP_500_EVERY_K and n % s.every_k == 0:
            await _send_json(writer, 500, error_body(500, f"planted fault: internal error on completion request {n}"))
        elif b is Behaviour.HTTP_STATUS:
            extra = {"Retry-After": "1"} if s.status == 429 else {}
            message = f"planted fault: HTTP {s.status} {_phrase(s.status)}"
            if s.html_error:
                await _send(writer, s.status, "text/html; charset=utf-8", HOSTILE_PAGE.encode(), extra)
            else:
                await _send_json(writer, s.status, error_body(s.status, message), extra)
        elif b is Behaviour.NOT_SSE:
            await _send(writer, 200, "text/html; charset=utf-8", HTML_PAGE.encode())
        elif b is Behaviour.STALL:
            await _stream_head(writer)
            await asyncio.sleep(s.stall_s)
        elif b is Behaviour.DROP_MID_STREAM:
            await _stream_head(writer)
            await _write(writer, answer.opening())
            await self._contents(writer, answer, s.chunks_before_fault)
            # no terminating chunk: returning lets _connection close the socket mid-body
        elif b is Behaviour.ENDLESS_LINE:
            await _stream_head(writer)
            await _endless_line(writer, s.line_bytes)
        elif b in (Behaviour.GARBAGE_SSE, Behaviour.ERROR_EVENT, Behaviour.EMPTY_STREAM, Behaviour.DEEP_NESTING) or (
            body.get("stream")
        ):
            await _stream_head(writer)
            await self._stream_body(writer, answer)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        else:
            await _send_json(writer, 200, answer.whole())

    async def _stream_body(self, writer: asyncio.StreamWriter, answer: _Completion) -> None:
        s, b = self.script, self.script.behaviour
        if b is Behaviour.GARBAGE_SSE:
            await _write(writer, *GARBAGE_EVENTS, "[DONE]")
        elif b is Behaviour.EMPTY_STREAM:
            await _write(writer, answer.opening(), "[DONE]")
        elif b is Behaviour.DEEP_NESTING:
            await _write(writer, answer.opening(), "[" * s.depth + "]" * s.depth, "[DONE]")
        elif b is Behaviour.ERROR_EVENT:
            await _write(writer, answer.opening())
            await self._contents(writer, answer, s.chunks_before_fault)
            await _write(writer, json.dumps({"error": {"message": "boom", "type": "server_error"}}))
        else:
            await _write(writer, answer.opening())
            await self._contents(writer, answer, s.chunks)
            await _write(writer, answer.finish())
            if answer.include_usage:
                await asyncio.sleep(s.usage_delay_s)
                await _write(writer, answer.usage_chunk())
            await _write(writer, "[DONE]")

    async def _contents(self, writer: asyncio.StreamWriter, answer: _Completion, count: int) -> None:
        """`count` content chunks, each after the chunk delay."""
        for _ in range(count):
            await asyncio.sleep(self.script.chunk_delay_s)
            await _write(writer, answer.content())


async def _read_request(reader: asyncio.StreamReader) -> ReceivedRequest | None:
    line = await reader.readline()
    if not line.strip():
        return None
    method, target, _version = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    data = await reader.readexactly(length) if length else b""
    text = data.decode("utf-8", errors="replace")
    try:
        body = json.loads(text) if text else None
    except json.JSONDecodeError:
        body = text  # kept as sent; a completion route answers 400 for it
    return ReceivedRequest(method, target.split("?", 1)[0], headers, body)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"  # a status code outside the standard list, e.g. 599


def _status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {_phrase(status)}\r\n".encode()


async def _send(
    writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes, extra: dict[str, str] | None = None
) -> None:
    headers = {"Content-Type": content_type, "Content-Length": str(len(body)), "Connection": "close", **(extra or {})}
    writer.write(_status_line(status) + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n" + body)
    await writer.drain()


async def _send_json(
    writer: asyncio.StreamWriter, status: int, payload: Any, extra: dict[str, str] | None = None
) -> None:
    await _send(writer, status, "application/json", json.dumps(payload).encode(), extra)


async def _write(writer: asyncio.StreamWriter, *events: str) -> None:
    """Each event as `data: ...` in its own HTTP chunk, flushed."""
    for data in events:
        writer.write(_sse(data))
    await writer.drain()


async def _stream_head(writer: asyncio.StreamWriter) -> None:
    head = (
        "Content-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n"
        "Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
    )
    writer.write(_status_line(200) + head.encode())
    await writer.drain()


async def _endless_line(writer: asyncio.StreamWriter, size: int) -> None:
    """`data: ` and `size` bytes of "x" in 64 KiB HTTP chunks, never a line end, then the body's end."""
    piece = 64 * 1024
    first = b"data: "
    writer.write(f"{len(first):x}\r\n".encode() + first + b"\r\n")
    for start in range(0, size, piece):
        n = min(piece, size - start)
        writer.write(f"{n:x}\r\n".encode() + b"x" * n + b"\r\n")
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with a TCP reset (SO_LINGER 0), as a crashed server's kernel would."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
