"""A kept-alive connection the server closes when it is reused: the client retries once, on a fresh connection.

llama.cpp's server does this under load; before the retry each such request was a spurious
connection failure charged to the server. The server here is a real socket on 127.0.0.1
that answers the first request of every connection (keep-alive) and drops the connection,
unanswered, when a second request arrives on it.
"""

from __future__ import annotations

import asyncio
import json
import time

from checks.load.client import StreamClient
from checks.load.endpoint import Endpoint
from checks.load.prompts import PromptRequest
from reports.records import ErrorKind

PROMPT = PromptRequest("hi", None, 4, 1, False, "test")


def _sse_body() -> bytes:
    chunk = {"choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": "length"}]}
    return f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()


async def _read_request(reader: asyncio.StreamReader) -> bool:
    head = await reader.readuntil(b"\r\n\r\n")
    lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    await reader.readexactly(lengths[0] if lengths else 0)
    return True


async def _run(drop_reused: bool) -> tuple[list, int, int]:
    seen = {"connections": 0, "requests": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["connections"] += 1
        served = 0
        try:
            while await _read_request(reader):
                seen["requests"] += 1
                if served and drop_reused:
                    return  # the reused connection is closed with the request unanswered
                body = _sse_body()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: keep-alive\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    endpoint = Endpoint(f"http://127.0.0.1:{port}", "m", request_timeout_s=5.0)
    async with server, StreamClient(endpoint, time.perf_counter()) as client:
        records = [await client.send(i, PROMPT, client.now()) for i in range(3)]
    return records, seen["connections"], seen["requests"]


def test_a_reused_connection_closed_unanswered_is_retried_once_on_a_fresh_one() -> None:
    records, connections, requests = asyncio.run(_run(drop_reused=True))
    assert [r.ok for r in records] == [True, True, True], [r.error_excerpt for r in records]
    assert requests > 3 and connections > 1  # some requests were sent twice, each retry on a new connection


def test_a_server_that_keeps_connections_alive_is_not_retried() -> None:
    records, connections, requests = asyncio.run(_run(drop_reused=False))
    assert all(r.ok for r in records)
    assert (connections, requests) == (1, 3)  # one kept-alive connection carried all three


def test_the_retry_does_not_hide_a_server_that_is_gone() -> None:
    async def run() -> list:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with (
            server,
            StreamClient(
                Endpoint(f"http://127.0.0.1:{port}", "m", request_timeout_s=5.0), time.perf_counter()
            ) as client,
        ):
            return [await client.send(0, PROMPT, client.now())]

    (record,) = asyncio.run(run())
    assert not record.ok and record.error_kind is ErrorKind.CONNECTION
