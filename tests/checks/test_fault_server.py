"""The planted-fault servers: each behaviour's bytes on the wire, seen through plain httpx and a raw socket."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest
from fault_server import Behaviour, FaultServer, Script

CHAT_PATH = "/v1/chat/completions"
PROMPT = "say three words"
CHAT = {"model": "fault-model", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8, "stream": True}
COMPLETION = {"model": "fault-model", "prompt": PROMPT, "max_tokens": 8, "stream": True}


def events(response: httpx.Response) -> list[str]:
    """The data fields of an SSE response, in order."""
    return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def post_events(server: FaultServer, body: dict, path: str = CHAT_PATH, **kwargs) -> tuple[httpx.Response, list[str]]:
    with (
        httpx.Client(base_url=server.base_url, timeout=5.0) as client,
        client.stream("POST", path, json=body, **kwargs) as response,
    ):
        return response, events(response)


def raw_post(server: FaultServer, body: dict, path: str = CHAT_PATH) -> bytes:
    """Everything the server writes for one request, read until it closes the socket."""
    payload = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    data = b""
    with socket.create_connection(("127.0.0.1", urlsplit(server.base_url).port), timeout=5.0) as sock:
        sock.sendall(head.encode() + b"\r\n" + payload)
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_health_and_models_then_unknown_routes() -> None:
    with FaultServer(Behaviour.HTTP_STATUS) as server, httpx.Client(base_url=server.base_url) as client:
        health, models = client.get("/health"), client.get("/v1/models")
        assert health.status_code == 200 and health.headers["connection"] == "close"
        assert [m["id"] for m in models.json()["data"]] == ["fault-model"]
        assert client.get("/v1/nothing").json()["error"]["type"] == "not_found_error"
        bad = client.post(CHAT_PATH, content=b"{not json", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400
    assert [(r.method, r.path) for r in server.requests] == [
        ("GET", "/health"),
        ("GET", "/v1/models"),
        ("GET", "/v1/nothing"),
        ("POST", CHAT_PATH),
    ]
    assert server.requests[-1].body == "{not json"


def test_ok_chat_stream_and_what_the_server_received() -> None:
    body = {**CHAT, "stream_options": {"include_usage": True}, "ignore_eos": True}
    with FaultServer(Script(chunks=3, tokens_per_chunk=2)) as server:
        response, data = post_events(server, body, headers={"Authorization": "Bearer sk-planted"})
        raw = raw_post(server, body)
    chunks = [json.loads(d) for d in data[:-1]]
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["content-type"].startswith("text/event-stream")
    assert chunks[0]["choices"] == [{"index": 0, "delta": {"role": "assistant"}}]
    assert [c["choices"][0]["delta"] for c in chunks[1:4]] == [{"content": "tok tok "}] * 3
    assert chunks[4]["choices"][0]["finish_reason"] == "length"
    assert chunks[5]["choices"] == []
    assert chunks[5]["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
    assert data[-1] == "[DONE]"
    assert raw.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")  # the last event, then the zero-length chunk
    received = server.requests[0]
    assert received.headers["authorization"] == "Bearer sk-planted"
    assert received.body["ignore_eos"] is True and received.body["stream_options"] == {"include_usage": True}


def test_ok_completions_stream_without_usage() -> None:
    with FaultServer(Script(chunks=2)) as server:
        _, data = post_events(server, COMPLETION, path="/v1/completions")
    texts = [json.loads(d)["choices"][0]["text"] for d in data[:-1]]
    assert texts == ["", "tok ", "tok ", ""]  # opening without content, two contents, the finish
    assert "usage" not in json.loads(data[-2])
    assert data[-1] == "[DONE]"


def test_non_stream_answers_are_one_json() -> None:
    with FaultServer(Script(chunks=2)) as server, httpx.Client(base_url=server.base_url) as client:
        chat = client.post(CHAT_PATH, json={**CHAT, "stream": False}).json()
        completion = client.post("/v1/completions", json={**COMPLETION, "stream": False}).json()
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "tok tok "}
    assert chat["usage"]["completion_tokens"] == 2
    assert completion["choices"][0]["text"] == "tok tok " and completion["object"] == "text_completion"


def test_every_kth_request_is_a_500() -> None:
    with (
        FaultServer(Script(Behaviour.HTTP_500_EVERY_K, every_k=2)) as server,
        httpx.Client(base_url=server.base_url) as client,
    ):
        responses = [client.post(CHAT_PATH, json=CHAT) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 500, 200, 500]
    assert responses[1].json()["error"]["type"] == "server_error"
    assert responses[2].text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize(
    ("status", "kind"), [(401, "authentication_error"), (404, "not_found_error"), (429, "rate_limit_error")]
)
def test_fixed_status_with_an_openai_error_body(status: int, kind: str) -> None:
    with FaultServer(Script(Behaviour.HTTP_STATUS, status=status)) as server:
        response = httpx.post(server.base_url + CHAT_PATH, json=CHAT)
    assert response.status_code == status
    assert response.json()["error"]["type"] == kind
    assert ("retry-after" in response.headers) == (status == 429)


def test_garbage_sse() -> None:
    with FaultServer(Behaviour.GARBAGE_SSE) as server:
        response, data = post_events(server, CHAT)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert data[-1] == "[DONE]" and len(data) > 1
    for line in data[:-1]:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)


def test_not_sse_is_an_html_page() -> None:
    with FaultServer(Behaviour.NOT_SSE) as server:
        response = httpx.post(server.base_url + CHAT_PATH, json=CHAT)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert response.text.startswith("<!DOCTYPE html>")


def test_error_event_inside_a_200_stream() -> None:
    with FaultServer(Script(Behaviour.ERROR_EVENT, chunks_before_fault=2)) as server:
        response, data = post_events(server, CHAT)
    assert response.status_code == 200
    assert [json.loads(d)["choices"][0]["delta"] for d in data[1:3]] == [{"content": "tok "}] * 2
    assert json.loads(data[-1]) == {"error": {"message": "boom", "type": "server_error"}}
    assert len(data) == 4  # no [DONE] after the error


def test_empty_stream_has_no_content() -> None:
    with FaultServer(Behaviour.EMPTY_STREAM) as server:
        _, data = post_events(server, CHAT)
    assert len(data) == 2 and data[1] == "[DONE]"
    assert json.loads(data[0])["choices"][0]["delta"] == {"role": "assistant"}


def test_slow_first_byte_trips_a_short_read_timeout() -> None:
    with FaultServer(Script(Behaviour.SLOW_FIRST_BYTE, first_byte_delay_s=0.5)) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.base_url + CHAT_PATH, json=CHAT, timeout=httpx.Timeout(5.0, read=0.05))
        assert [r.path for r in server.requests] == [CHAT_PATH]  # received at once, answered late
        assert httpx.post(server.base_url + CHAT_PATH, json=CHAT).status_code == 200


def test_stall_sends_headers_then_nothing() -> None:
    with (
        FaultServer(Behaviour.STALL) as server,
        httpx.Client(timeout=httpx.Timeout(5.0, read=0.2)) as client,
        client.stream("POST", server.base_url + CHAT_PATH, json=CHAT) as response,
    ):
        assert response.status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            response.read()
    # leaving the block stopped the server although its answer was still stalling


def test_die_after_n_resets_everything_afterwards() -> None:
    with FaultServer(Script(Behaviour.DIE_AFTER_N, ok_requests=2)) as server:
        assert [post_events(server, CHAT)[1][-1] for _ in range(2)] == ["[DONE]", "[DONE]"]
        with pytest.raises(httpx.TransportError):
            post_events(server, CHAT)
        with pytest.raises(httpx.TransportError):
            httpx.get(server.base_url + "/health")
        port = urlsplit(server.base_url).port
        # A TCP reset, not a clean close; it can land during connect or at the first read.
        with pytest.raises(ConnectionResetError), socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
            sock.recv(1)
    assert len(server.requests) == 2  # the dead server read nothing more


def test_drop_mid_stream_leaves_the_chunked_body_unfinished() -> None:
    with FaultServer(Script(Behaviour.DROP_MID_STREAM, chunks_before_fault=2)) as server:
        raw = raw_post(server, CHAT)
        with pytest.raises(httpx.RemoteProtocolError):
            post_events(server, CHAT)
    assert raw.count(b'"content": "tok "') == 2
    assert not raw.endswith(b"0\r\n\r\n") and b"[DONE]" not in raw


def test_bad_scripts_are_value_errors() -> None:
    with pytest.raises(ValueError, match="every_k must be >= 1"):
        Script(Behaviour.HTTP_500_EVERY_K, every_k=0)
    with pytest.raises(ValueError, match="HTTP status"):
        Script(Behaviour.HTTP_STATUS, status=42)


def test_endless_line_sends_one_line_without_an_end() -> None:
    with FaultServer(Script(Behaviour.ENDLESS_LINE, line_bytes=300_000)) as server:
        response = httpx.post(server.base_url + CHAT_PATH, json=CHAT, timeout=5.0)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert response.content == b"data: " + b"x" * 300_000


def test_deep_nesting_sends_one_deeply_nested_event() -> None:
    with FaultServer(Script(Behaviour.DEEP_NESTING, depth=5000)) as server:
        _, data = post_events(server, CHAT)
    assert len(data) == 3 and data[-1] == "[DONE]"
    assert data[1] == "[" * 5000 + "]" * 5000


def test_html_error_page_instead_of_json() -> None:
    with FaultServer(Script(Behaviour.HTTP_STATUS, status=502, html_error=True)) as server:
        response = httpx.post(server.base_url + CHAT_PATH, json=CHAT)
    assert response.status_code == 502 and response.headers["content-type"].startswith("text/html")
    assert "\x1b[2J" in response.text
