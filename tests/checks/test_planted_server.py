"""The planted-fault server itself: clean by default, and each flag plants exactly its fault.

The readiness tests trust this server to be a correct deployment unless told otherwise;
these tests are what earns that trust.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from tests.planted_server import MODEL, Faults, PlantedServer

KEY = {"Authorization": "Bearer planted-key"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def clean() -> PlantedServer:
    with PlantedServer() as server:
        yield server


def test_clean_server_guards_every_door(clean: PlantedServer) -> None:
    with httpx.Client(base_url=clean.base_url, timeout=10) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/v1/models").status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 401
        assert c.post("/v1/chat/completions?api_key=planted-key", json=CHAT).status_code == 401
        ok = c.post("/v1/chat/completions", json=CHAT, headers=KEY)
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "tok tok tok"
        assert c.post("/v1/chat/completions", content=b"{not json", headers=KEY).status_code == 400
        deep = ("[" * 100 + "]" * 100).encode()
        assert c.post("/v1/chat/completions", content=deep, headers=KEY).status_code == 400
        assert c.post("/v1/chat/completions", json={**CHAT, "temperature": "hot"}, headers=KEY).status_code == 400
        assert c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 10**7}, headers=KEY).status_code == 400
        big = c.post("/v1/chat/completions", content=b"x" * (200 * 1024), headers=KEY)
        assert big.status_code == 413 and "Traceback" not in big.text
        assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 404
        pre = c.options("/v1/chat/completions", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in pre.headers
        text = c.get("/metrics", headers=KEY).text
        assert "preflight:num_requests_running" in text and "preflight:kv_cache_usage_perc" in text


def test_stream_and_usage(clean: PlantedServer) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(base_url=clean.base_url, timeout=10) as c:
        lines = [ln for ln in c.post("/v1/chat/completions", json=body, headers=KEY).text.splitlines() if ln]
    assert lines[-1] == "data: [DONE]"
    usage = json.loads(lines[-2].removeprefix("data: "))["usage"]
    assert usage == {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}


def test_rate_limit_gives_429_with_retry_after() -> None:
    with PlantedServer(rate_limit_rpm=60, rate_limit_burst=2) as server, httpx.Client(base_url=server.base_url) as c:
        codes = [
            c.post("/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 1}, headers=KEY)
            for _ in range(4)
        ]
    assert [r.status_code for r in codes][:2] == [200, 200]
    assert codes[-1].status_code == 429 and codes[-1].headers["retry-after"].isdigit()


@pytest.mark.parametrize("leak", [False, True])
def test_disconnect_frees_the_slot_unless_leaking(leak: bool) -> None:
    body = {**CHAT, "max_tokens": 500, "stream": True}
    with PlantedServer(Faults(kv_leak_on_cancel=leak), token_delay_s=0.02) as server:
        with httpx.Client(base_url=server.base_url, timeout=10) as c:
            with c.stream("POST", "/v1/chat/completions", json=body, headers=KEY) as resp:
                lines = resp.iter_lines()
                next(lines)
                next(lines)
            deadline = threading.Event()
            for _ in range(50):  # a bounded wait for the server to notice the disconnect
                if server.metrics.running._value.get() == (1 if leak else 0):
                    break
                deadline.wait(0.1)
        assert server.metrics.running._value.get() == (1 if leak else 0)
        assert (server.metrics.kv_usage._value.get() > 0) is leak


def test_faults_are_planted(tmp_path: Path) -> None:
    faults = Faults(
        no_auth=True,
        stack_traces=True,
        error_500_on_bad_json=True,
        cors_wildcard_credentials=True,
        docs_exposed=True,
        canary_leak=True,
        log_prompts=True,
        no_metrics=True,
        health_always_ok=True,
    )
    log = tmp_path / "planted.log"
    with PlantedServer(faults, ready=False, log_path=log) as server, httpx.Client(base_url=server.base_url) as c:
        assert c.get("/health").status_code == 200
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 503
        server.ready = True
        system = {
            **CHAT,
            "max_tokens": 4,
            "messages": [{"role": "system", "content": "CANARY-1234 secret"}, {"role": "user", "content": "say hi"}],
        }
        reply = c.post("/v1/chat/completions", json=system).json()["choices"][0]["message"]["content"]
        assert "CANARY-1234" in reply
        bad = c.post("/v1/chat/completions", content=b"{oops")
        assert bad.status_code == 500 and "Traceback" in bad.text
        pre = c.options("/v1/chat/completions", headers={"Origin": "https://evil.example"})
        assert pre.headers["access-control-allow-origin"] == "https://evil.example"
        assert pre.headers["access-control-allow-credentials"] == "true"
        assert c.get("/docs").status_code == 200 and c.get("/metrics").status_code == 404
    assert "say hi" in log.read_text()
