"""Limits on a real server child: CORS, backpressure (503), rate limit (429), graceful SIGTERM.

One child with one running sequence and a waiting queue of one, a rate
limit of 600 RPM bursting to 5, and one allowed CORS origin. The SIGTERM
test ends the child, so it runs last in this file.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import MODEL, RemoteServer, sse_events, start_server, stream_text

ORIGIN = "https://app.example"
BUCKET_REFILL_S = 0.6  # 5 tokens at 10 per second, with a margin


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    log = Path(tmp_path_factory.mktemp("limits")) / "server.log"
    args = [
        "--quant",
        "fp32",
        "--max-model-len",
        "256",
        "--max-num-seqs",
        "1",
        "--max-queue",
        "1",
        "--rate-limit",
        "600",
        "--rate-limit-burst",
        "5",
        "--cors-origin",
        ORIGIN,
        "--grace-period",
        "20",
    ]
    srv = start_server(args, log)
    yield srv
    srv.stop()


def _body(max_tokens: int, stream: bool = False) -> dict:
    return {
        "model": MODEL,
        "prompt": "Once upon a time",
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }


def test_cors_allows_only_the_configured_origin(server: RemoteServer) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    ok = httpx.options(server.url + "/v1/completions", headers={"Origin": ORIGIN} | preflight)
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-credentials" not in ok.headers
    evil = httpx.options(server.url + "/v1/completions", headers={"Origin": "https://evil.example"} | preflight)
    assert "access-control-allow-origin" not in evil.headers
    time.sleep(BUCKET_REFILL_S)
    simple = httpx.get(server.url + "/v1/models", headers=server.headers | {"Origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    simple = httpx.get(server.url + "/v1/models", headers=server.headers | {"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


async def _post_all(server: RemoteServer, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(
            *(client.post(server.url + "/v1/completions", json=_body(24), headers=server.headers) for _ in range(n))
        )


def test_full_waiting_queue_answers_503(server: RemoteServer) -> None:
    time.sleep(BUCKET_REFILL_S)
    responses = asyncio.run(_post_all(server, 3))
    statuses = sorted(r.status_code for r in responses)
    assert statuses[0] == 200 and statuses[-1] == 503, statuses
    for r in responses:
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "queue_full"
            assert r.headers["retry-after"] == "1"
        else:
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 24


async def _get_all(server: RemoteServer, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(*(client.get(server.url + "/v1/models", headers=server.headers) for _ in range(n)))


def test_rate_limit_answers_429_with_retry_after(server: RemoteServer) -> None:
    time.sleep(BUCKET_REFILL_S)
    responses = asyncio.run(_get_all(server, 15))  # arrive together: far faster than 10 per second
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429} and 5 <= statuses.count(200) <= 8, statuses
    for r in responses:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
            assert int(r.headers["retry-after"]) >= 1
    assert all(httpx.get(server.url + "/health").status_code == 200 for _ in range(10))  # probes are not limited
    assert httpx.get(server.url + "/metrics", headers=server.headers).status_code == 200


def test_sigterm_finishes_in_flight_requests_and_exits_0(server: RemoteServer) -> None:
    time.sleep(BUCKET_REFILL_S)
    events: list[dict | str] = []
    first_chunk = threading.Event()

    def consume() -> None:
        with httpx.stream(
            "POST", server.url + "/v1/completions", json=_body(40, stream=True), headers=server.headers, timeout=60
        ) as r:
            for event in sse_events(r.iter_lines()):
                events.append(event)
                if isinstance(event, dict) and stream_text([event], chat=False):
                    first_chunk.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert first_chunk.wait(30), "no token arrived"
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while True:  # the listener closes at once: new connections are refused
        try:
            httpx.get(server.url + "/health", timeout=1)
        except httpx.ConnectError:
            break
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        time.sleep(0.05)
    reader.join(60)
    assert events and events[-1] == "[DONE]"
    chunks = [e for e in events if isinstance(e, dict)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert server.proc.wait(30) == 0
    log = server.log_tail(200)
    assert "Traceback" not in log
    assert "test-key" not in server.log_path.read_text()
