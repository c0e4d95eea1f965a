"""Streams that misbehave on purpose, for the reliability checks: one dropped mid-generation,
one read to its end with a signal at the first token, and one read very slowly.

`checks.load.client.StreamClient` reads every stream whole and as fast as it can, which
is what a benchmark needs; these checks need the opposite. The slow reader talks HTTP
over its own socket with a small receive buffer: over aiohttp, or with the operating
system's default buffers (hundreds of KiB on loopback), the server could write the whole
reply into memory and never feel a slow client at all.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from checks.load.client import ERROR_BODY_BYTES, RequestOptions, body_excerpt, build_payload, read_body
from checks.load.endpoint import Endpoint
from checks.load.prompts import PromptRequest
from checks.load.sse import DONE, SSELimitError, SSEParser

STORY_PROMPT = "Write a long story about a lighthouse keeper and the sea."
SLOW_RCVBUF_BYTES = 4096  # the kernel doubles it; the smallest window that still moves bytes


def stream_body(endpoint: Endpoint, max_tokens: int, prompt: str = STORY_PROMPT) -> bytes:
    """A streaming request that asks the server to run to `max_tokens` (when it can ignore EOS)."""
    request = PromptRequest(
        prompt, None, max_tokens=max_tokens, input_tokens=None, ignore_eos=True, source="reliability"
    )
    return json.dumps(build_payload(endpoint, request, RequestOptions())).encode()


@dataclass(slots=True)
class StreamEnd:
    """How one stream went: its status, the content chunks seen, and whether it ended properly."""

    status: int | None = None
    chunks: int = 0
    finished: bool = False  # a finish_reason was seen
    done: bool = False  # [DONE] was seen
    dropped: bool = False  # we closed it on purpose
    error: str | None = None
    first_chunk_s: float | None = None  # perf_counter times
    end_s: float | None = None

    @property
    def completed(self) -> bool:
        """Ended the way a stream should: content, then a finish_reason or [DONE], and no error."""
        return self.error is None and self.chunks > 0 and (self.finished or self.done)

    def describe(self) -> str:
        if self.status is None:
            return f"no answer ({self.error})"
        if self.status != 200:
            return f"HTTP {self.status}: {self.error or ''}".rstrip(": ")
        how = "dropped by us" if self.dropped else ("completed" if self.completed else f"broken ({self.error})")
        return f"200, {self.chunks} content chunk(s), {how}"


def _take(end: StreamEnd, data: str, api: str) -> None:
    if data == DONE:
        end.done = True
        return
    try:
        obj = json.loads(data)
    except RecursionError:
        end.error = "an event nested too deeply to parse"
        return
    except ValueError:
        end.error = "an event that is not JSON"
        return
    if not isinstance(obj, dict):
        end.error = f"not a JSON object: {data[:80]}"
        return
    if "error" in obj:
        end.error = f"error event: {str(obj['error'])[:120]}"
        return
    for choice in (obj.get("choices") or [])[:1]:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta") if api == "chat" else None
        text = (delta or {}).get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(text, str) and text:
            end.chunks += 1
            if end.first_chunk_s is None:
                end.first_chunk_s = time.perf_counter()
        if choice.get("finish_reason"):
            end.finished = True


async def run_stream(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    body: bytes,
    *,
    drop_after_chunks: int | None = None,
    first_chunk: asyncio.Event | None = None,
) -> StreamEnd:
    """Send one stream; read it to its end, or close the connection after `drop_after_chunks` content chunks.

    `first_chunk` is set when the first content arrives (or when the stream ends without any).
    Never raises for what the server does: the outcome is in the returned StreamEnd.
    """
    end = StreamEnd()
    parser = SSEParser()
    try:
        async with session.post(endpoint.url, data=body, headers=endpoint.headers()) as resp:
            end.status = resp.status
            if resp.status != 200:
                end.error = body_excerpt(await read_body(resp, ERROR_BODY_BYTES), resp.content_type)
                return end
            async for piece in resp.content.iter_any():
                for event in parser.feed(piece):
                    _take(end, event, endpoint.api)
                if end.chunks and first_chunk is not None:
                    first_chunk.set()
                if drop_after_chunks is not None and end.chunks >= drop_after_chunks:
                    end.dropped = True
                    resp.close()  # closes the socket: the server sees the client go away
                    return end
                if end.done or end.error:
                    break
            for event in parser.close():
                _take(end, event, endpoint.api)
    except TimeoutError:
        end.error = "timeout"
    except SSELimitError as exc:  # a hostile stream, bounded as the load generator's client bounds it
        end.error = str(exc)
    except RecursionError:  # an event nested just under json's limit can still overflow when shown
        end.error = "an event nested too deeply to read"
    except (aiohttp.ClientError, OSError) as exc:
        end.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        end.end_s = time.perf_counter()
        if first_chunk is not None:
            first_chunk.set()
    return end


@dataclass(slots=True)
class SlowRead:
    """What the slow reader got: the status line, the bytes it read, and whether the reply ended."""

    status: int | None = None
    bytes_read: int = 0
    reads: int = 0
    eof: bool = False
    error: str | None = None


async def slow_read(
    endpoint: Endpoint,
    body: bytes,
    *,
    read_bytes: int,
    pause_s: float,
    until: asyncio.Event,
    budget_s: float,
    started: asyncio.Event | None = None,
) -> SlowRead:
    """POST `body` over a socket with a tiny receive buffer, then read `read_bytes` at a time with
    `pause_s` between reads, until `until` is set, `budget_s` passes or the reply ends; then close.

    `started` is set when the first bytes of the answer arrive (or when the read ends without any).
    """
    out = SlowRead()
    url = urlsplit(endpoint.url)
    host = url.hostname or "127.0.0.1"
    port = url.port or (443 if url.scheme == "https" else 80)
    deadline = time.monotonic() + budget_s
    loop = asyncio.get_running_loop()
    sock: socket.socket | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        family, kind, proto, _, address = (await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF_BYTES)  # before connect: sets the window
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, address), budget_s)
        tls = ssl.create_default_context() if url.scheme == "https" else None
        reader, writer = await asyncio.open_connection(sock=sock, ssl=tls, server_hostname=host if tls else None)
        head = [
            f"POST {url.path or '/'} HTTP/1.1",
            f"Host: {url.netloc}",
            "Connection: close",
            f"Content-Length: {len(body)}",
        ] + [f"{k}: {v}" for k, v in endpoint.headers().items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        while not until.is_set() and time.monotonic() < deadline:
            left = deadline - time.monotonic()
            piece = await asyncio.wait_for(reader.read(read_bytes), max(0.1, left))
            if not piece:
                out.eof = True
                break
            if out.bytes_read == 0:
                out.status = _status(piece)
                if started is not None:
                    started.set()
            out.bytes_read += len(piece)
            out.reads += 1
            await asyncio.sleep(pause_s)
    except TimeoutError:
        out.error = "timeout"
    except (OSError, ssl.SSLError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        if writer is not None:
            writer.close()
        elif sock is not None:
            sock.close()
        if started is not None:
            started.set()
    return out


def _status(first_bytes: bytes) -> int | None:
    """The status code of an HTTP/1.x status line at the start of `first_bytes`, if it is one."""
    parts = first_bytes.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


def new_session(timeout_s: float) -> aiohttp.ClientSession:
    """A session whose connections are never reused: a dropped stream's socket must really close,
    and no check's requests may ride on a connection another check left behind."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=30))
