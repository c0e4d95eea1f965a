"""Before the model is ready: /health and the APIs answer 503, and a failed load says so without details.

The app runs under a real uvicorn on loopback in a thread, with a load
function that blocks until the test releases it (then fails), so no model
is needed and the loading window is as long as the test wants.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from server_harness import MODEL, REPO, BlockedLoad, free_port, in_process_server

from engine.serving.app import create_app
from engine.serving.options import ServerOptions

KEY = {"Authorization": "Bearer k"}


@pytest.fixture(scope="module")
def loading_server() -> Iterator[tuple[str, BlockedLoad]]:
    load = BlockedLoad()
    app = create_app(ServerOptions(api_key="k", rate_limit_rpm=600, rate_limit_burst=100), load=load)
    with in_process_server(app) as (url, _thread):
        yield url, load
        load.release.set()


def _error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert "/secret" not in r.text and "Traceback" not in r.text


def test_503_while_loading_then_after_a_failed_load(loading_server: tuple[str, BlockedLoad]) -> None:
    url, load = loading_server
    r = httpx.get(url + "/health")
    _error(r, 503, "model_loading")
    assert r.headers["retry-after"] == "5"
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    _error(httpx.post(url + "/v1/completions", json=body, headers=KEY), 503, "model_loading")
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    _error(httpx.post(url + "/v1/chat/completions", json=chat, headers=KEY), 503, "model_loading")
    _error(httpx.get(url + "/v1/models", headers=KEY), 503, "model_loading")
    # client errors are still client errors while loading
    bad = httpx.post(url + "/v1/completions", content=b"{", headers=KEY | {"Content-Type": "application/json"})
    _error(bad, 400, "invalid_json")
    _error(httpx.get(url + "/v1/models"), 401, "invalid_api_key")
    assert httpx.get(url + "/metrics", headers=KEY).status_code == 200
    assert httpx.get(url + "/version", headers=KEY).status_code == 200

    load.release.set()
    deadline = time.monotonic() + 10
    while httpx.get(url + "/health").json()["error"]["code"] == "model_loading":
        assert time.monotonic() < deadline, "load never finished"
        time.sleep(0.05)
    _error(httpx.get(url + "/health"), 503, "model_load_failed")
    _error(httpx.post(url + "/v1/completions", json=body, headers=KEY), 503, "model_load_failed")


def test_serve_exits_1_when_the_engine_cannot_be_built() -> None:
    cmd = [
        sys.executable,
        "-m",
        "engine",
        "serve",
        "--port",
        str(free_port()),
        "--quant",
        "fp32",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--kv-cache-bytes",
        "1000",
        "--max-model-len",
        "64",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "error: the model failed to load: the KV pool (1 blocks x 16 tokens) cannot hold" in done.stderr
    assert "Traceback" not in done.stderr
