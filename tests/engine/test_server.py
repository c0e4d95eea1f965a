"""The OpenAI-compatible server over real HTTP on loopback: both APIs, the SDK, errors, auth.

One server child for the whole module (fp32, API key "test-key",
max_model_len 512). Every answer that is not a 200 must carry the OpenAI
error shape and no traceback or path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import MODEL, RemoteServer, sse_events, start_server, stream_text

MAX_MODEL_LEN = 512
MAX_BODY_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    log = Path(tmp_path_factory.mktemp("server")) / "server.log"
    # The auth tests send dozens of wrong keys from one address: above the default --auth-failure-limit.
    args = [
        "--quant",
        "fp32",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--max-body-bytes",
        str(MAX_BODY_BYTES),
        "--auth-failure-limit",
        "1000",
    ]
    srv = start_server(args, log)
    yield srv
    srv.stop()


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"message", "type", "code"} <= set(err), err
    assert err["message"]
    for leak in ("Traceback", ".py", "/work", "site-packages", 'File "'):
        assert leak not in r.text, r.text
    if code is not None:
        assert err["code"] == code, err
    return err


def completion(prompt: str, max_tokens: int = 8, **extra: object) -> dict:
    return {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}


def chat(content: str, max_tokens: int = 8, **extra: object) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }


# ---- control routes and auth ------------------------------------------------------------


def test_health_models_version(server: RemoteServer) -> None:
    # no key needed; the harness starts it --eager, so no reason is given for eager decode
    assert httpx.get(server.url + "/health").json() == {"status": "ok", "decode": "eager"}
    models = httpx.get(server.url + "/v1/models", headers=server.headers).json()
    assert models["object"] == "list"
    assert [(m["id"], m["max_model_len"]) for m in models["data"]] == [(MODEL, MAX_MODEL_LEN)]
    assert httpx.get(f"{server.url}/v1/models/{MODEL}", headers=server.headers).json()["id"] == MODEL
    assert_openai_error(httpx.get(server.url + "/v1/models/gpt-4", headers=server.headers), 404, "model_not_found")
    assert "version" in httpx.get(server.url + "/version", headers=server.headers).json()


ROUTES = [
    ("GET", "/v1/models"),
    ("GET", f"/v1/models/{MODEL}"),
    ("GET", "/metrics"),
    ("GET", "/version"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/no/such/route"),
    ("GET", "/docs"),
]
BAD_CREDENTIALS = {
    "none": {},
    "wrong key": {"Authorization": "Bearer wrong-key"},
    "flipped case": {"Authorization": "Bearer TEST-KEY"},
    "prefix of key": {"Authorization": "Bearer test-ke"},
    "basic scheme": {"Authorization": "Basic test-key"},
    "bare key": {"Authorization": "test-key"},
}


@pytest.mark.parametrize("cred", BAD_CREDENTIALS)
@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_but_health_needs_the_key(server: RemoteServer, method: str, path: str, cred: str) -> None:
    body = completion("hi") if method == "POST" else None
    r = httpx.request(method, server.url + path, json=body, headers=BAD_CREDENTIALS[cred], timeout=10)
    assert_openai_error(r, 401, "invalid_api_key")
    assert r.headers.get("www-authenticate") == "Bearer"


def test_key_in_query_string_is_not_accepted(server: RemoteServer) -> None:
    for query in ("api_key=test-key", "key=test-key", "access_token=test-key"):
        assert_openai_error(httpx.get(f"{server.url}/v1/models?{query}"), 401)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/redoc"),
        ("GET", "/info"),
        ("GET", "/server_info"),
        ("GET", "/is_paused"),
        ("GET", "/v1/metrics"),
        ("POST", "/invocations"),
        ("POST", "/inference/v1/generate"),
        ("POST", "/generate"),
        ("POST", "/pooling"),
        ("POST", "/classify"),
    ],
)
def test_no_extra_routes_even_with_the_key(server: RemoteServer, method: str, path: str) -> None:
    r = httpx.request(method, server.url + path, json={} if method == "POST" else None, headers=server.headers)
    assert_openai_error(r, 404, "not_found")


def test_wrong_method_is_405(server: RemoteServer) -> None:
    assert_openai_error(httpx.put(server.url + "/v1/completions", headers=server.headers), 405)
    assert_openai_error(httpx.get(server.url + "/v1/chat/completions", headers=server.headers), 405)


def test_no_cors_without_cors_origin(server: RemoteServer) -> None:
    headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    r = httpx.options(server.url + "/v1/chat/completions", headers=headers | server.headers)
    assert "access-control-allow-origin" not in r.headers
    assert "server" not in r.headers  # no software banner


# ---- completions and chat, streamed and not ----------------------------------------------


def test_completion_non_streaming(server: RemoteServer) -> None:
    r = server.post("/v1/completions", completion("The capital of France is", logprobs=0))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == MODEL and body["id"].startswith("cmpl-")
    assert "system_fingerprint" not in body
    (choice,) = body["choices"]
    assert "Paris" in choice["text"]
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 8
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 8
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == 8
    assert "".join(lp["tokens"]) == choice["text"]
    assert all(v <= 0 for v in lp["token_logprobs"])


def test_completion_streaming_matches_non_streaming(server: RemoteServer) -> None:
    prompt = "Three primary colours are"
    full = server.post("/v1/completions", completion(prompt)).json()["choices"][0]["text"]
    body = completion(prompt, stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=server.headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(r.iter_lines()))
    assert events[-1] == "[DONE]"
    chunks = [e for e in events if isinstance(e, dict)]
    assert stream_text(chunks, chat=False) == full
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8
    assert all(c["usage"] is None for c in chunks[:-1])


def test_chat_non_streaming_and_streaming(server: RemoteServer) -> None:
    r = server.post("/v1/chat/completions", chat("What is 2+2?", logprobs=True))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    content = choice["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    assert {"token", "logprob", "bytes", "top_logprobs"} <= set(content[0])
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json=chat("What is 2+2?", stream=True), headers=server.headers
    ) as s:
        events = list(sse_events(s.iter_lines()))
    chunks = [e for e in events if isinstance(e, dict)]
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert stream_text(chunks, chat=True) == choice["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert "usage" not in chunks[-1]
    assert events[-1] == "[DONE]"


def test_eos_stops_unless_ignore_eos(server: RemoteServer) -> None:
    short = server.post("/v1/chat/completions", chat("Hi", max_tokens=48)).json()
    assert short["choices"][0]["finish_reason"] == "stop"
    assert short["usage"]["completion_tokens"] < 48
    long = server.post("/v1/chat/completions", chat("Hi", max_tokens=48, ignore_eos=True)).json()
    assert long["choices"][0]["finish_reason"] == "length"
    assert long["usage"]["completion_tokens"] == 48


def test_stop_string_truncates_streamed_and_not(server: RemoteServer) -> None:
    full = server.post("/v1/completions", completion("The capital of France is", max_tokens=12)).json()
    text = full["choices"][0]["text"]
    stop = text[3:6]  # a stop string that starts inside the output
    cut = text[: text.index(stop)]
    r = server.post("/v1/completions", completion("The capital of France is", max_tokens=12, stop=[stop, "zzzz"]))
    assert r.json()["choices"][0] | {"logprobs": None} == {
        "index": 0,
        "text": cut,
        "logprobs": None,
        "finish_reason": "stop",
    }
    body = completion("The capital of France is", max_tokens=12, stop=stop, stream=True)
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=server.headers) as s:
        chunks = [e for e in sse_events(s.iter_lines()) if isinstance(e, dict)]
    assert stream_text(chunks, chat=False) == cut
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_seeded_sampling_is_reproducible(server: RemoteServer) -> None:
    body = completion("Once upon a time", max_tokens=10, temperature=0.9, top_p=0.9, seed=1234)
    first, second = (server.post("/v1/completions", body).json()["choices"][0]["text"] for _ in range(2))
    assert first == second


def test_prompt_as_token_ids(server: RemoteServer) -> None:
    for prompt in ([504, 3575, 282, 4649, 314], [[504, 3575, 282, 4649, 314]]):
        body = server.post("/v1/completions", completion("x", ignore_eos=True) | {"prompt": prompt}).json()
        assert body["usage"]["prompt_tokens"] == 5 and body["usage"]["total_tokens"] == 13


def test_usage_says_how_many_prompt_tokens_the_prefix_cache_served(server: RemoteServer) -> None:
    """OpenAI's `usage.prompt_tokens_details.cached_tokens`: a prompt sent again finds its full 16-token blocks
    cached (40 tokens: 32), streamed or not; its first sending computed every token."""
    prompt = [1000 + 7 * i for i in range(40)]  # no other test sends these ids
    body = completion("x", max_tokens=2, ignore_eos=True) | {"prompt": prompt}
    first = server.post("/v1/completions", body).json()["usage"]
    again = server.post("/v1/completions", body).json()["usage"]
    assert first["prompt_tokens_details"] == {"cached_tokens": 0} and first["prompt_tokens"] == 40
    assert again["prompt_tokens_details"] == {"cached_tokens": 32}
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=server.headers) as r:
        chunks = [e for e in sse_events(r.iter_lines()) if isinstance(e, dict)]
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 32}


# ---- the official SDK ---------------------------------------------------------------------


def test_openai_sdk_unchanged(server: RemoteServer) -> None:
    client = server.client()
    assert [m.id for m in client.models.list()] == [MODEL]
    done = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 6
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_completion_tokens=8,
        temperature=0,
        seed=1,
        user="tester",
        presence_penalty=0,
        logprobs=True,
    )
    assert reply.choices[0].message.content
    assert reply.choices[0].logprobs.content[0].logprob <= 0
    pieces, usage = [], None
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        pieces += [c.delta.content or "" for c in chunk.choices]
    assert "".join(pieces) == reply.choices[0].message.content
    assert usage is not None and usage.completion_tokens == reply.usage.completion_tokens
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True
        )
    )
    assert text == done.choices[0].text


def test_openai_sdk_raises_typed_errors(server: RemoteServer) -> None:
    import openai

    client = server.client()
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.completions.create(model=MODEL, prompt="hi", max_tokens=1, n=2)
    with pytest.raises(openai.AuthenticationError):
        type(client)(base_url=client.base_url, api_key="nope", max_retries=0).models.list()


# ---- errors ---------------------------------------------------------------------------------

LONG_PROMPT = "hello " * (2 * MAX_MODEL_LEN)
ERROR_CASES = {
    # name: (path, raw body or JSON, extra headers, status, code)
    "malformed json": ("/v1/completions", b'{"model": "x", "prompt": ', {}, 400, "invalid_json"),
    "not an object": ("/v1/completions", b"[1, 2]", {}, 400, "invalid_json"),
    "NaN literal": ("/v1/completions", b'{"model": "m", "prompt": "x", "temperature": NaN}', {}, 400, "invalid_json"),
    "wrong content type": (
        "/v1/completions",
        b"model=x",
        {"Content-Type": "application/x-www-form-urlencoded"},
        400,
        "invalid_content_type",
    ),
    "temperature hot": ("/v1/completions", completion("x", temperature="hot"), {}, 400, "invalid_parameter"),
    "temperature 5": ("/v1/completions", completion("x", temperature=5), {}, 400, "invalid_parameter"),
    "top_p 0": ("/v1/completions", completion("x", top_p=0), {}, 400, "invalid_parameter"),
    "max_tokens 0": ("/v1/completions", completion("x", max_tokens=0), {}, 400, "invalid_parameter"),
    "unknown field": ("/v1/completions", completion("x", frobnicate=True), {}, 400, "invalid_parameter"),
    "tools": ("/v1/chat/completions", chat("x", tools=[]), {}, 400, "invalid_parameter"),
    "missing model": ("/v1/completions", {"prompt": "x"}, {}, 400, "invalid_parameter"),
    "missing prompt": ("/v1/completions", {"model": MODEL}, {}, 400, "invalid_parameter"),
    "n 2": ("/v1/completions", completion("x", n=2), {}, 400, "invalid_parameter"),
    "n 1000": ("/v1/chat/completions", chat("x", n=1000), {}, 400, "invalid_parameter"),
    "best_of": ("/v1/completions", completion("x", best_of=3), {}, 400, "invalid_parameter"),
    "top logprobs": ("/v1/completions", completion("x", logprobs=5), {}, 400, "invalid_parameter"),
    "chat top_logprobs": (
        "/v1/chat/completions",
        chat("x", logprobs=True, top_logprobs=20),
        {},
        400,
        "invalid_parameter",
    ),
    "logit_bias": ("/v1/chat/completions", chat("x", logit_bias={"50256": -100}), {}, 400, "invalid_parameter"),
    "presence_penalty": ("/v1/completions", completion("x", presence_penalty=0.5), {}, 400, "invalid_parameter"),
    "empty stop": ("/v1/completions", completion("x", stop=[""]), {}, 400, "invalid_parameter"),
    "empty messages": ("/v1/chat/completions", chat("x") | {"messages": []}, {}, 400, "invalid_parameter"),
    "bad role": (
        "/v1/chat/completions",
        chat("x") | {"messages": [{"role": "wizard", "content": "x"}]},
        {},
        400,
        "invalid_parameter",
    ),
    "image part": (
        "/v1/chat/completions",
        chat("x")
        | {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]},
        {},
        400,
        "invalid_parameter",
    ),
    "empty prompt": ("/v1/completions", completion(""), {}, 400, "invalid_prompt"),
    "batch of prompts": ("/v1/completions", completion("x") | {"prompt": ["a", "b"]}, {}, 400, "invalid_prompt"),
    "token id out of range": ("/v1/completions", completion("x") | {"prompt": [1, 10**9]}, {}, 400, "invalid_prompt"),
    "max_tokens 10M": ("/v1/completions", completion("x", max_tokens=10_000_000), {}, 400, "context_length_exceeded"),
    "prompt twice the context": (
        "/v1/completions",
        completion(LONG_PROMPT, max_tokens=1),
        {},
        400,
        "context_length_exceeded",
    ),
    "chat prompt too long": (
        "/v1/chat/completions",
        chat(LONG_PROMPT) | {"max_tokens": None},
        {},
        400,
        "context_length_exceeded",
    ),
    "unknown model": ("/v1/completions", completion("x") | {"model": "gpt-4"}, {}, 404, "model_not_found"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_client_errors_are_openai_shaped(server: RemoteServer, case: str) -> None:
    path, body, headers, status, code = ERROR_CASES[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"} | server.headers | headers
    r = httpx.post(server.url + path, content=content, headers=hdrs, timeout=30)
    assert_openai_error(r, status, code)


def test_context_error_gives_both_counts(server: RemoteServer) -> None:
    r = server.post("/v1/completions", completion("The capital of France is", max_tokens=10_000_000))
    message = assert_openai_error(r, 400)["message"]
    assert "plus max_tokens 10000000 exceeds the model context of 512 tokens" in message
    assert "prompt of 5 tokens" in message


def test_body_over_the_limit_is_413(server: RemoteServer) -> None:
    big = json.dumps(completion("x" * (10 * 1024 * 1024))).encode()  # 10 MB, Content-Length known
    r = httpx.post(
        server.url + "/v1/completions",
        content=big,
        timeout=30,
        headers={"Content-Type": "application/json"} | server.headers,
    )
    assert_openai_error(r, 413, "request_too_large")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the server must count
        yield b'{"model": "m", "prompt": "'
        for _ in range(8):
            yield b"x" * (16 * 1024)
        yield b'"}'

    r = httpx.post(
        server.url + "/v1/completions",
        content=chunked(),
        timeout=30,
        headers={"Content-Type": "application/json"} | server.headers,
    )
    assert_openai_error(r, 413, "request_too_large")
    assert server.post("/v1/completions", completion("still fine", max_tokens=1)).status_code == 200


# ---- engine behaviour through HTTP --------------------------------------------------------


def test_disconnect_mid_stream_frees_kv_blocks(server: RemoteServer) -> None:
    aborted = server.metrics().get("preflight:request_success_total{finish_reason=abort}", 0.0)
    body = completion("Once upon a time there was a little robot who", max_tokens=400, ignore_eos=True, stream=True)
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=server.headers) as r:
        events = sse_events(r.iter_lines())
        for _ in range(3):
            assert isinstance(next(events), dict)
        assert server.metrics()["preflight:kv_cache_usage_perc"] > 0
    # leaving the block closed the connection mid-stream
    server.wait_metric("preflight:kv_cache_usage_perc", lambda v: v == 0.0)
    assert server.metrics()["preflight:num_requests_running"] == 0
    server.wait_metric("preflight:request_success_total{finish_reason=abort}", lambda v: v == aborted + 1)


def test_disconnect_without_streaming_aborts(server: RemoteServer) -> None:
    body = completion("Once upon a time", max_tokens=400, ignore_eos=True)
    with pytest.raises(httpx.ReadTimeout):
        server.post("/v1/completions", body, timeout=httpx.Timeout(10, read=0.5))
    server.wait_metric("preflight:kv_cache_usage_perc", lambda v: v == 0.0)


SUBJECTS = ["the ocean", "a robot", "my garden", "the moon", "old trains", "green tea", "a violin", "winter"]
TEMPLATES = ["Tell me about {}:", "{} is", "A short poem about {}:\n", "Why do people love {}?"]
PROMPTS_32 = [t.format(s) for t in TEMPLATES for s in SUBJECTS]


async def _stream_one(client: httpx.AsyncClient, server: RemoteServer, prompt: str) -> tuple[str, int]:
    body = completion(prompt, max_tokens=8, ignore_eos=True, stream=True, stream_options={"include_usage": True})
    async with client.stream("POST", server.url + "/v1/completions", json=body, headers=server.headers) as r:
        assert r.status_code == 200
        lines = [line async for line in r.aiter_lines()]
    events = list(sse_events(iter(lines)))
    assert events[-1] == "[DONE]"
    chunks = [e for e in events if isinstance(e, dict)]
    return stream_text(chunks, chat=False), chunks[-1]["usage"]["completion_tokens"]


async def _stream_all(server: RemoteServer, prompts: list[str]) -> list[tuple[str, int]]:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        return await asyncio.gather(*(_stream_one(client, server, p) for p in prompts))


def test_32_concurrent_streams_match_running_alone(server: RemoteServer) -> None:
    assert len(set(PROMPTS_32)) == 32
    alone = [
        server.post("/v1/completions", completion(p, ignore_eos=True)).json()["choices"][0]["text"] for p in PROMPTS_32
    ]
    together = asyncio.run(_stream_all(server, PROMPTS_32))
    assert [t for t, _ in together] == alone
    assert all(n == 8 for _, n in together)
    server.wait_metric("preflight:kv_cache_usage_perc", lambda v: v == 0.0)


def test_metrics_exposition(server: RemoteServer) -> None:
    r = httpx.get(server.url + "/metrics", headers=server.headers)
    assert r.headers["content-type"].startswith("text/plain")
    m = server.metrics()
    for name in (
        "preflight:time_to_first_token_seconds_count",
        "preflight:time_per_output_token_seconds_count",
        "preflight:e2e_request_latency_seconds_count",
        "preflight:prompt_tokens_total",
        "preflight:generation_tokens_total",
        "preflight:request_success_total{finish_reason=length}",
    ):
        assert m[name] > 0, name
    for name in (
        "preflight:num_requests_running",
        "preflight:num_requests_waiting",
        "preflight:kv_cache_usage_perc",
        "preflight:num_preemptions_total",
        "preflight:prefix_cache_hit_rate",
        "preflight:spec_decode_acceptance_rate",
    ):
        assert name in m, name


def test_log_holds_no_key_prompt_or_output(server: RemoteServer) -> None:
    log = server.log_path.read_text()
    assert '"POST /v1/completions" 200' in log  # the access log is there...
    for secret in ("test-key", "api_key", "The capital of France", "Paris", "Traceback"):
        assert secret not in log, secret  # ...without query strings, prompts or outputs
