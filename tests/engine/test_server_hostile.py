"""Hostile requests to a real server child (issue 16, items 1, 2 and 5).

One child whose message cap is raised above what a 2 MiB body holds, so that a
~1 MiB chat request of 30k empty messages is really encoded: `/health` must keep
answering meanwhile (the encode is near-linear and runs off the event loop).
The caps themselves, long stop strings and lone surrogates are probed on the
same child. Deadlines are hang detectors (seconds), never latency asserts.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import MODEL, RemoteServer, sse_events, start_server, stream_text

MAX_MESSAGES = 40_000
MAX_STOP_CHARS = 64
HEALTH_DEADLINE_S = 10.0  # a blocked event loop held /health for minutes before the fix
ENCODE_DEADLINE_S = 300.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    log = Path(tmp_path_factory.mktemp("hostile")) / "server.log"
    args = [
        "--quant",
        "fp32",
        "--max-model-len",
        "256",
        "--max-body-bytes",
        str(2 * 1024 * 1024),
        "--max-messages",
        str(MAX_MESSAGES),
        "--max-stop-chars",
        str(MAX_STOP_CHARS),
    ]
    srv = start_server(args, log)
    yield srv
    srv.stop()


def _empty_messages(n: int) -> list[dict[str, str]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": ""} for i in range(n)]


def test_health_answers_while_a_huge_chat_request_is_encoded(server: RemoteServer) -> None:
    body = {"model": MODEL, "messages": _empty_messages(30_000), "max_tokens": 1}
    answer: dict[str, httpx.Response] = {}

    def post() -> None:
        answer["chat"] = server.post("/v1/chat/completions", body, timeout=ENCODE_DEADLINE_S)

    sender = threading.Thread(target=post, daemon=True)
    sender.start()
    polls = 0
    with httpx.Client(timeout=HEALTH_DEADLINE_S) as client:
        while sender.is_alive():
            assert client.get(server.url + "/health").status_code == 200  # a ReadTimeout here is the failure
            polls += 1
            time.sleep(0.05)
    sender.join()
    assert polls >= 1
    chat = answer["chat"]
    assert chat.status_code == 400, chat.text  # encoded in full: ~165k tokens cannot fit 256
    assert chat.json()["error"]["code"] == "context_length_exceeded"


def test_more_messages_than_the_cap_is_a_400(server: RemoteServer) -> None:
    r = server.post("/v1/chat/completions", {"model": MODEL, "messages": _empty_messages(MAX_MESSAGES + 1)})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "messages" and error["code"] == "invalid_parameter"
    assert f"at most {MAX_MESSAGES} messages" in error["message"] and "--max-messages" in error["message"]


def test_a_stop_string_over_the_cap_is_a_400(server: RemoteServer) -> None:
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "stop": ["\n", "x" * (MAX_STOP_CHARS + 1)]}
    r = server.post("/v1/completions", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "stop" and f"at most {MAX_STOP_CHARS} characters" in error["message"]


def test_a_stop_string_at_the_cap_streams_the_same_text(server: RemoteServer) -> None:
    """A long stop that never matches only delays text while it might; nothing is lost or reordered."""
    plain = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    expected = server.post("/v1/completions", plain).json()["choices"][0]["text"]
    long_stop = " " + "the " * ((MAX_STOP_CHARS - 1) // 4)
    with httpx.stream(
        "POST",
        server.url + "/v1/completions",
        json=plain | {"stream": True, "stop": [long_stop]},
        headers=server.headers,
        timeout=60,
    ) as r:
        assert r.status_code == 200
        events = list(sse_events(r.iter_lines()))
    assert stream_text(events, chat=False) == expected


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        pytest.param("/v1/completions", {"prompt": "ok \ud800"}, "the prompt", id="completion-prompt"),
        pytest.param(
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": "\udc00"}]},
            "messages[1].content",
            id="chat-content",
        ),
        pytest.param(
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud83d"}]}]},
            "messages[0].content",
            id="chat-text-part",
        ),
    ],
)
def test_a_lone_surrogate_is_a_400_not_a_500(server: RemoteServer, path: str, body: dict, where: str) -> None:
    raw = json.dumps({"model": MODEL, "max_tokens": 2} | body)  # ensure_ascii: the surrogate goes as "\ud800"
    r = httpx.post(server.url + path, content=raw, headers=server.headers | {"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_prompt" and error["message"].startswith(f"{where} holds a lone surrogate")
    assert "Traceback" not in server.log_tail(200)
