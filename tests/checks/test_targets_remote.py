"""RemoteTarget.connect() against planted-fault servers: an Endpoint, or a TargetError that says why."""

from __future__ import annotations

import asyncio
import time

import pytest
from fault_server import MODEL, Behaviour, FaultServer, Script

from checks.load.client import StreamClient
from checks.load.endpoint import Endpoint
from checks.load.prompts import PromptRequest
from checks.load.targets import RemoteTarget, TargetError, free_port, wait_healthy
from reports.records import RequestRecord

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def test_ok_stream_picks_the_served_model() -> None:
    with FaultServer(Script()) as server:
        endpoint = RemoteTarget(server.base_url).connect()
        paths = [(r.method, r.path) for r in server.requests]
    assert isinstance(endpoint, Endpoint)
    assert endpoint.model == MODEL
    assert endpoint.api == "chat"
    assert endpoint.base_url == server.base_url
    assert endpoint.supports_ignore_eos and endpoint.supports_stream_usage
    assert endpoint.server_pid is None
    assert paths == [("GET", "/v1/models"), ("POST", "/v1/chat/completions")]


def test_named_model_and_completions_api() -> None:
    with FaultServer(Script()) as server:
        endpoint = RemoteTarget(server.base_url, model=MODEL, api="completions").connect()
        probe = server.requests[-1]
    assert endpoint.model == MODEL and endpoint.api == "completions"
    assert probe.path == "/v1/completions"
    assert probe.body["model"] == MODEL


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_base_url_with_or_without_v1(suffix: str) -> None:
    with FaultServer(Script()) as server:
        endpoint = RemoteTarget(server.base_url + suffix).connect()
        paths = [r.path for r in server.requests]
    assert endpoint.model == MODEL
    assert endpoint.url == server.base_url + "/v1/chat/completions"
    assert paths == ["/v1/models", "/v1/chat/completions"]


def test_key_is_sent_with_every_probe_request() -> None:
    with FaultServer(Script()) as server:
        with RemoteTarget(server.base_url, api_key="sk-remote") as endpoint:
            assert endpoint.api_key == "sk-remote"
        headers = [r.headers.get("authorization") for r in server.requests]
    assert headers == ["Bearer sk-remote", "Bearer sk-remote"]


def test_wrong_model_lists_the_served_models() -> None:
    with FaultServer(Script()) as server, pytest.raises(TargetError) as info:
        RemoteTarget(server.base_url, model="no-such-model").connect()
    message = str(info.value)
    assert "'no-such-model' is not served" in message
    assert MODEL in message


@pytest.mark.parametrize(("key", "what"), [(None, "no API key was given"), ("sk-wrong", "the API key was refused")])
def test_http_401_names_the_api_key(key: str | None, what: str) -> None:
    with FaultServer(Script(Behaviour.HTTP_STATUS, status=401)) as server, pytest.raises(TargetError) as info:
        RemoteTarget(server.base_url, api_key=key).connect()
    message = str(info.value)
    assert "HTTP 401" in message
    assert what in message
    assert "--api-key" in message
    assert "sk-wrong" not in message


def test_http_404_on_the_probe_suggests_the_other_api() -> None:
    with FaultServer(Script(Behaviour.HTTP_STATUS, status=404)) as server, pytest.raises(TargetError) as info:
        RemoteTarget(server.base_url).connect()
    assert "HTTP 404" in str(info.value)
    assert "--api" in str(info.value)


@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [
        (Behaviour.GARBAGE_SSE, "malformed_stream"),
        (Behaviour.NOT_SSE, "malformed_stream"),
        (Behaviour.ERROR_EVENT, "stream_error"),
        (Behaviour.EMPTY_STREAM, "empty_stream"),
    ],
)
def test_a_broken_stream_is_a_target_error(behaviour: Behaviour, kind: str) -> None:
    with FaultServer(Script(behaviour)) as server, pytest.raises(TargetError) as info:
        RemoteTarget(server.base_url).connect()
    assert f"failed ({kind})" in str(info.value)
    assert server.base_url in str(info.value)


def test_a_dead_port_cannot_connect() -> None:
    base_url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TargetError, match="cannot connect") as info:
        RemoteTarget(base_url).connect()
    assert base_url in str(info.value)


def test_a_server_that_dies_before_the_probe_cannot_connect() -> None:
    with FaultServer(Script(Behaviour.DIE_AFTER_N, ok_requests=0)) as server, pytest.raises(TargetError) as info:
        RemoteTarget(server.base_url).connect()
    assert "cannot connect" in str(info.value)


def test_a_non_json_error_page_is_named_not_echoed() -> None:
    """Issue 16, item 11: a body reaches the error only when it is JSON; an HTML page with escape codes does not."""
    with (
        FaultServer(Script(Behaviour.HTTP_STATUS, status=502, html_error=True)) as server,
        pytest.raises(TargetError) as info,
    ):
        RemoteTarget(server.base_url).connect()
    message = str(info.value)
    assert "answered HTTP 502: a text/html body of " in message
    assert "\x1b" not in message and "<html>" not in message


def test_proxy_variables_are_ignored_by_the_health_poll_and_the_load_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16, item 11: one proxy rule. urllib's health poll used to honour HTTP_PROXY (so a bundled server was
    polled through the proxy and never seen healthy) while aiohttp's probe and load ignored it. Both go direct now."""
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    prompt = PromptRequest("hi", None, max_tokens=4, input_tokens=1, ignore_eos=True, source="test#0")

    async def one(endpoint: Endpoint) -> RequestRecord:
        async with StreamClient(endpoint, time.perf_counter()) as client:
            return await client.send(0, prompt, 0.0)

    with FaultServer(Script()) as server:
        wait_healthy(server.base_url, lambda: None, 5.0, "the fault server", lambda: "(no log)")
        endpoint = RemoteTarget(server.base_url).connect()
        record = asyncio.run(one(endpoint))
        paths = [r.path for r in server.requests]
    assert record.ok, record.error_excerpt
    assert paths == ["/health", "/v1/models", "/v1/chat/completions", "/v1/chat/completions"]
