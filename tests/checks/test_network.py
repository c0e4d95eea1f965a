"""The round-trip probe against real sockets on loopback: an answering server, a silent one, none."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from checks.load.endpoint import Endpoint
from checks.load.network import probe_rtt_sync
from reports.network import NetworkDoc, RttProbe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[tuple[int, list[bytes]]]:
    """A real TCP server on loopback; `answer` False makes it read and never reply."""
    answer = getattr(request, "param", True)
    seen: list[bytes] = []
    loop = asyncio.new_event_loop()
    port = _free_port()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        if answer:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            writer.close()
        else:
            await asyncio.sleep(30)

    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        srv = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", port))
        started.set()
        loop.run_forever()
        srv.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield port, seen
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_each_sample_times_the_handshake_and_a_minimal_request(server: tuple[int, list[bytes]]) -> None:
    port, seen = server
    probe = probe_rtt_sync(Endpoint(f"http://127.0.0.1:{port}/v1", "m", api_key="k-secret"), samples=3)
    assert len(probe.tcp_connect_ms) == 3 and len(probe.first_byte_ms) == 3 and not probe.errors
    assert probe.tls_ms == [] and probe.rtt_ms == min(probe.tcp_connect_ms) >= 0
    # the request is the minimal one, on the target's own path, with its key
    assert seen[0].startswith(b"GET /v1/models HTTP/1.1\r\n") and b"Authorization: Bearer k-secret" in seen[0]


@pytest.mark.parametrize("server", [False], indirect=True)
def test_a_silent_server_is_a_timeout_line_not_an_exception(server: tuple[int, list[bytes]]) -> None:
    port, _seen = server
    probe = probe_rtt_sync(Endpoint(f"http://127.0.0.1:{port}", "m"), samples=1, timeout_s=0.5)
    assert len(probe.tcp_connect_ms) == 1 and probe.first_byte_ms == []
    assert probe.errors == ["no answer within 0.5 s"]


def test_a_dead_port_and_a_plain_server_behind_https_are_error_lines(server: tuple[int, list[bytes]]) -> None:
    dead = probe_rtt_sync(Endpoint(f"http://127.0.0.1:{_free_port()}", "m"), samples=2, timeout_s=2)
    assert dead.tcp_connect_ms == [] and len(dead.errors) == 2 and "ConnectionRefusedError" in dead.errors[0]
    assert NetworkDoc(before=dead).rtt_ms is None
    port, _seen = server
    tls = probe_rtt_sync(Endpoint(f"https://127.0.0.1:{port}", "m"), samples=1, timeout_s=2)
    assert len(tls.tcp_connect_ms) == 1 and tls.tls_ms == [] and len(tls.errors) == 1


def test_the_round_trip_is_the_fastest_handshake_of_either_probe() -> None:
    doc = NetworkDoc(before=RttProbe(tcp_connect_ms=[3.0, 2.0]), after=RttProbe(tcp_connect_ms=[1.5, 9.0]))
    assert doc.rtt_ms == 1.5
    assert NetworkDoc.model_validate_json(doc.model_dump_json()) == doc
