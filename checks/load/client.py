"""The streaming request function: one OpenAI-style request in, one `RequestRecord` out.

Timing follows DESIGN.md "Metric definitions": the clock starts when the request
is handed to the connection (`send_s`), a chunk counts as the first token only when
it carries non-empty content or reasoning (role-only and empty chunks do not), and
every content chunk's arrival is kept with its token count. Nothing here raises for
a bad server: a non-200 status, a timeout, a dropped connection, bytes that are not
SSE, an error event inside a 200 stream, or a stream with no content each become a
failed record with its kind, HTTP status and a short excerpt. A hostile server is
bounded too: no byte for `read_timeout_s` is a timeout, a line, event or answer past
the endpoint's byte limits is a malformed stream, and so is any event that cannot be
parsed (nested too deeply, say), so one bad answer never costs a run its records.
A body is echoed into an error only when it is JSON, and only as an excerpt
(`body_excerpt`): the server chooses those bytes, and errors reach the terminal.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp

from checks.load.endpoint import Endpoint
from checks.load.prompts import PromptRequest
from checks.load.sse import DONE, SSELimitError, SSEParser
from checks.load.tokenizer import TextTokenizer, count_tokens
from reports.records import ErrorKind, RequestRecord, TokenSource, excerpt

ERROR_BODY_BYTES = 4096  # read at most this much of a failed response
HEAD_BYTES = 256
KEEPALIVE_S = 4.0  # the start of every body is kept to explain a malformed stream
# What reading a hostile event can raise besides our own _StreamFault; each is that request's malformed stream.
_PARSE_FAILURES = (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError)
_MEDIA_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+$")


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestOptions:
    """Sampling fields sent with every request (None leaves the server's default)."""

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None


class _StreamFault(Exception):
    """A 200 stream that broke the protocol; becomes a failed record, never escapes the client."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


async def read_body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most `limit` bytes of a response body: a hostile server can make a body endless."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        piece = await resp.content.read(limit - size)
        if not piece:
            break
        parts.append(piece)
        size += len(piece)
    return b"".join(parts)


def body_excerpt(body: bytes, content_type: str | None = None) -> str:
    """What an error may show of a response body: a short excerpt when the body is JSON, else its type and size.

    OpenAI-style servers explain errors in JSON. Anything else (an HTML page, binary, terminal escape
    codes) is the server's choice of bytes that would reach the console, result files and the page;
    parsing is the check, since valid JSON holds no raw control characters.
    """
    text = body.decode("utf-8", "replace")
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        media = content_type if content_type and _MEDIA_TYPE.match(content_type) else "untyped"
        return f"a {media} body of {len(body)} bytes, not shown (only JSON is)"
    return excerpt(text)


def build_payload(endpoint: Endpoint, request: PromptRequest, options: RequestOptions) -> dict[str, Any]:
    """The JSON body for `request` on `endpoint`'s API, asking for a stream with usage when supported."""
    body: dict[str, Any] = {"model": endpoint.model, "max_tokens": request.max_tokens, "stream": True}
    if endpoint.api == "chat":
        if request.messages is None:
            body["messages"] = [{"role": "user", "content": request.prompt}]
        else:
            body["messages"] = list(request.messages)
    else:
        if request.prompt is None:
            raise ValueError(
                f"{request.source}: chat messages cannot go to the completions API; use --api chat or a prompt dataset"
            )
        body["prompt"] = request.prompt
    if endpoint.supports_stream_usage:
        body["stream_options"] = {"include_usage": True}
    if request.ignore_eos and endpoint.supports_ignore_eos:
        body["ignore_eos"] = True
    for name in ("temperature", "top_p", "seed"):
        value = getattr(options, name)
        if value is not None:
            body[name] = value
    return body


@dataclass(slots=True)
class _Stream:
    """What one response stream delivered so far."""

    chunk_times: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    finished: bool = False  # a finish_reason was seen
    done: bool = False  # [DONE] was seen
    head: bytes = b""
    content_type: str | None = None


def _chunk_text(choice: Any, api: str) -> str:
    if not isinstance(choice, dict):
        raise _StreamFault(ErrorKind.MALFORMED_STREAM, f"a choice is not an object but {type(choice).__name__}")
    if api == "completions":
        text = choice.get("text")
    else:
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise _StreamFault(ErrorKind.MALFORMED_STREAM, "a chat chunk's delta is not an object")
        text = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
    return text if isinstance(text, str) else ""


def _take_event(stream: _Stream, data: str, at: float, api: str) -> None:
    if data == DONE:
        stream.done = True
        return
    try:
        obj = json.loads(data)
    except RecursionError:
        detail = f"an event is nested too deeply to parse ({len(data)} chars)"
        raise _StreamFault(ErrorKind.MALFORMED_STREAM, detail) from None
    except ValueError:
        raise _StreamFault(ErrorKind.MALFORMED_STREAM, f"an event is not JSON ({len(data)} chars)") from None
    if not isinstance(obj, dict):
        raise _StreamFault(ErrorKind.MALFORMED_STREAM, f"an event is not a JSON object: {data[:200]}")
    if "error" in obj:
        err = obj["error"]
        message = err.get("message", err) if isinstance(err, dict) else err
        raise _StreamFault(ErrorKind.STREAM_ERROR, f"error event in the stream: {message}")
    if isinstance(obj.get("usage"), dict):
        stream.usage = obj["usage"]
    choices = obj.get("choices") or []
    if not isinstance(choices, list):
        raise _StreamFault(ErrorKind.MALFORMED_STREAM, "choices is not a list")
    for choice in choices[:1]:
        text = _chunk_text(choice, api)
        if text:
            stream.chunk_times.append(at)
            stream.texts.append(text)
        if choice.get("finish_reason"):
            stream.finished = True


def _take_events(stream: _Stream, parse: Callable[[], list[str]], at: float, api: str) -> None:
    """Parse what arrived and take each event. Every failure to read hostile bytes (a limit passed, an event nested
    past the recursion limit, a shape nobody expected) is this request's malformed stream, never the run's error."""
    try:
        for event in parse():
            _take_event(stream, event, at, api)
    except SSELimitError as exc:
        raise _StreamFault(ErrorKind.MALFORMED_STREAM, str(exc)) from None
    except _PARSE_FAILURES as exc:
        raise _StreamFault(ErrorKind.MALFORMED_STREAM, f"an event could not be read ({type(exc).__name__})") from None


def _spread(total: int, weights: list[int]) -> list[int]:
    """`total` split over len(weights) parts in proportion to `weights` (largest remainder), summing to `total`."""
    if sum(weights) <= 0:
        weights = [1] * len(weights)
    scale = sum(weights)
    parts = [divmod(total * w, scale) for w in weights]
    counts = [q for q, _ in parts]
    by_remainder = sorted(range(len(parts)), key=lambda i: -parts[i][1])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


class StreamClient:
    """One HTTP session for a whole run; `send()` is safe to call from many tasks at once.

    `origin` is the run clock's zero (a `time.perf_counter()` value): every time in a
    record is seconds since it. Token counts come from the server's `usage`, else
    from `tokenizer`, else one per content chunk, and each record says which.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        origin: float,
        tokenizer: TextTokenizer | None = None,
        options: RequestOptions | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.origin = origin
        self.tokenizer = tokenizer
        self.options = options or RequestOptions()
        self._session: aiohttp.ClientSession | None = None
        self._fresh_session: aiohttp.ClientSession | None = None
        self._sent_at: dict[int, float] = {}  # requests on the wire now: their send times, for cancelled()
        self.answers: dict[int, str] = {}  # kept answer texts (send(keep_answer=True)), taken by the caller
        self._keep: set[int] = set()  # request ids whose answer text send() keeps
        self._headers = endpoint.headers()

    async def __aenter__(self) -> StreamClient:
        # Idle connections are dropped after 4 s, under the 5 s idle timeout common in servers
        # (llama.cpp's among them), so a reused connection is rarely one the server just closed.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=KEEPALIVE_S)
        timeout = aiohttp.ClientTimeout(
            total=self.endpoint.request_timeout_s, sock_connect=30, sock_read=self.endpoint.read_timeout_s
        )
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        # Retries go through a session that never reuses a connection: the pool may hold more
        # connections the server has already closed.
        fresh = aiohttp.TCPConnector(limit=0, force_close=True)
        self._fresh_session = aiohttp.ClientSession(connector=fresh, timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in (self._session, self._fresh_session):
            if session is not None:
                await session.close()
        self._session = self._fresh_session = None

    def now(self) -> float:
        return time.perf_counter() - self.origin

    async def send(
        self,
        request_id: int,
        request: PromptRequest,
        ready_s: float,
        scheduled_s: float | None = None,
        warmup: bool = False,
        keep_answer: bool = False,
    ) -> RequestRecord:
        """Send one streaming request and return its record (a failure is a record, not an exception).

        Cancellation (the run was stopped) propagates; the caller records it. With `keep_answer`, a
        successful answer's text waits in `answers[request_id]` for the caller (a conversation's next
        turn sends it back); records never hold text.
        """
        if self._session is None:
            raise RuntimeError("StreamClient.send() outside `async with StreamClient(...)`")
        data = json.dumps(build_payload(self.endpoint, request, self.options)).encode()
        base = dict(request_id=request_id, scheduled_s=scheduled_s, ready_s=ready_s, warmup=warmup)
        send_s = self._sent_at[request_id] = self.now()
        # A cancel propagates from here with _sent_at kept: cancelled() reads the real send time.
        if keep_answer:
            self._keep.add(request_id)
        try:
            record = await self._exchange(request_id, request, data, base, send_s)
        finally:
            self._keep.discard(request_id)
        self._sent_at.pop(request_id, None)
        return record

    async def _exchange(
        self, request_id: int, request: PromptRequest, data: bytes, base: dict[str, Any], send_s: float
    ) -> RequestRecord:
        """The HTTP exchange of `send()`: one retry on a closed kept-alive connection, then the record."""
        if self._session is None:
            raise RuntimeError("StreamClient used outside `async with StreamClient(...)`")
        stream = _Stream()
        status: int | None = None
        for attempt in (1, 2):
            session = self._session if attempt == 1 or self._fresh_session is None else self._fresh_session
            try:
                async with session.post(self.endpoint.url, data=data, headers=self._headers) as resp:
                    status = resp.status
                    if status != 200:
                        body = await read_body(resp, ERROR_BODY_BYTES)
                        return self._failed(base, send_s, ErrorKind.HTTP, status, body_excerpt(body, resp.content_type))
                    await self._read_stream(resp, stream)
                break
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt == 1 and status is None:
                    # A kept-alive connection the server closed just as we reused it (servers cap requests
                    # per connection and time idle ones out; llama.cpp's does both): no answer began, so
                    # the request goes again on a fresh connection and latency starts at that send.
                    # A server that is really gone fails the retry too.
                    send_s = self._sent_at[request_id] = self.now()
                    continue
                return self._failed(base, send_s, ErrorKind.CONNECTION, status, f"{type(exc).__name__}: {exc}", stream)
            except _StreamFault as fault:
                return self._failed(base, send_s, fault.kind, status, fault.detail, stream)
            except TimeoutError as exc:
                ep = self.endpoint
                detail = f"no complete answer within {ep.request_timeout_s:g} s"
                if isinstance(exc, aiohttp.SocketTimeoutError):
                    detail = f"no byte of the answer for {ep.read_timeout_s:g} s (the read timeout)"
                return self._failed(base, send_s, ErrorKind.TIMEOUT, status, detail)
            except (aiohttp.ClientError, OSError) as exc:
                return self._failed(base, send_s, ErrorKind.CONNECTION, status, f"{type(exc).__name__}: {exc}", stream)
        if not stream.texts:
            detail = "the stream carried no content"
            if stream.head and not stream.chunk_times and not (stream.done or stream.finished or stream.usage):
                detail = f"not an SSE stream of OpenAI chunks: {body_excerpt(stream.head, stream.content_type)}"
                return self._failed(base, send_s, ErrorKind.MALFORMED_STREAM, status, detail)
            return self._failed(base, send_s, ErrorKind.EMPTY_STREAM, status, detail)
        if not (stream.done or stream.finished):
            return self._failed(
                base,
                send_s,
                ErrorKind.MALFORMED_STREAM,
                status,
                "the stream ended without [DONE] or a finish_reason",
                stream,
            )
        # E2E ends at the last content chunk, as vLLM's does: the usage chunk and [DONE] that follow
        # do not stretch latency, and E2E = TTFT + the sum of the ITLs exactly.
        return self._succeeded(base, send_s, stream.chunk_times[-1], request, stream)

    async def _read_stream(self, resp: aiohttp.ClientResponse, stream: _Stream) -> None:
        parser = SSEParser(self.endpoint.max_event_bytes, self.endpoint.max_response_bytes)
        api = self.endpoint.api
        stream.content_type = resp.content_type
        async for piece in resp.content.iter_any():
            at = self.now()
            if len(stream.head) < HEAD_BYTES:
                stream.head += piece[: HEAD_BYTES - len(stream.head)]
            _take_events(stream, partial(parser.feed, piece), at, api)
            if stream.done:
                return
        _take_events(stream, parser.close, self.now(), api)

    def _succeeded(
        self, base: dict[str, Any], send_s: float, end_s: float, request: PromptRequest, stream: _Stream
    ) -> RequestRecord:
        usage = stream.usage or {}
        text = "".join(stream.texts)
        if base["request_id"] in self._keep:
            self.answers[base["request_id"]] = text
        n_chunks = len(stream.texts)
        out_tokens = usage.get("completion_tokens")
        per_chunk = None if self.tokenizer is None else [max(1, len(self.tokenizer.encode(t))) for t in stream.texts]
        if isinstance(out_tokens, int) and out_tokens >= 0:
            source = TokenSource.USAGE
        elif per_chunk is not None:
            # Chunk by chunk: re-encoding the joined text merges tokens the model emitted apart
            # ("\n" + "\n" -> "\n\n"), and the total must equal the sum the throughput windows use.
            out_tokens, source = sum(per_chunk), TokenSource.TOKENIZER
        else:
            out_tokens, source = n_chunks, TokenSource.CHUNKS
        # The per-chunk counts always add up to the request's output tokens (peak throughput sums them).
        chunk_tokens = [1] * n_chunks if out_tokens == n_chunks else _spread(out_tokens, per_chunk or [1] * n_chunks)
        in_tokens = usage.get("prompt_tokens")
        if not isinstance(in_tokens, int):
            in_tokens = self._prompt_tokens(request)
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        cached = cached if isinstance(cached, int) and not isinstance(cached, bool) and cached >= 0 else None
        if cached is not None and isinstance(in_tokens, int):
            cached = min(cached, in_tokens)  # a server cannot have cached more of the prompt than there was
        return RequestRecord(
            **base,
            send_s=send_s,
            first_token_s=stream.chunk_times[0],
            chunk_times_s=stream.chunk_times,
            chunk_tokens=chunk_tokens,
            end_s=end_s,
            input_tokens=in_tokens,
            output_tokens=out_tokens,
            token_source=source,
            ok=True,
            http_status=200,
            error_kind=None,
            error_excerpt=None,
            output_chars=len(text),
            cached_input_tokens=cached,
        )

    def _prompt_tokens(self, request: PromptRequest) -> int | None:
        """Prompt tokens as sent, when the server gave no usage. A plain prompt sent to the chat API went
        inside a user message, so the chat template's tokens count too (None without a chat tokenizer)."""
        if self.endpoint.api == "chat" and request.messages is None:
            if self.tokenizer is None:
                return None
            return count_tokens(self.tokenizer, None, [{"role": "user", "content": request.prompt}])
        return request.input_tokens

    def _failed(
        self,
        base: dict[str, Any],
        send_s: float,
        kind: ErrorKind,
        status: int | None,
        detail: str,
        stream: _Stream | None = None,
    ) -> RequestRecord:
        return RequestRecord(
            **base,
            send_s=send_s,
            first_token_s=None,
            chunk_times_s=[],
            chunk_tokens=[],
            end_s=self.now(),
            input_tokens=None,
            output_tokens=None,
            token_source=None,
            ok=False,
            http_status=status,
            error_kind=kind,
            error_excerpt=excerpt(detail),
            output_chars=len("".join(stream.texts)) if stream else 0,
        )

    def cancelled(self, request_id: int, ready_s: float, scheduled_s: float | None, warmup: bool) -> RequestRecord:
        """The record of a request the run stopped before it finished (counted apart from failures).

        `send_s` is when it went on the wire, or the cancel time if it never did.
        """
        base = dict(request_id=request_id, scheduled_s=scheduled_s, ready_s=ready_s, warmup=warmup)
        send_s = self._sent_at.pop(request_id, self.now())
        return self._failed(base, send_s, ErrorKind.CANCELLED, None, "the run was stopped")

    def sent_at(self, request_id: int) -> float | None:
        """When a request in flight went on the wire (its latest try), on the run clock; None before that."""
        return self._sent_at.get(request_id)

    def abandoned(
        self, request_id: int, ready_s: float, scheduled_s: float | None, warmup: bool, after_s: float
    ) -> RequestRecord:
        """The record of a request the cancellation load gave up on `after_s` seconds after sending it."""
        base = dict(request_id=request_id, scheduled_s=scheduled_s, ready_s=ready_s, warmup=warmup)
        send_s = self._sent_at.pop(request_id, self.now())
        detail = f"abandoned by the client {after_s * 1000:.0f} ms after sending (cancellation load)"
        return self._failed(base, send_s, ErrorKind.ABANDONED, None, detail)
