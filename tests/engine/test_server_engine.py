"""Engine behaviour through HTTP: preemption under a tiny KV pool, exact speculative decoding, the step log.

One server child with n-gram speculation and a pool of 5 blocks of 16
tokens (too small for 4 sequences of ~34 tokens, so some are preempted and
recomputed). Outputs must equal `Engine.generate` run in this process, a
single-sequence path that shares neither the paged cache nor the scheduler.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from server_harness import MODEL, RemoteServer, sse_events, start_server, stream_text

from engine.run.runtime import Engine, LoadOptions
from engine.sampling import SamplingParams

BLOCK_BYTES = 2 * 30 * 16 * 3 * 64 * 4  # K+V, 30 layers, 16 tokens, 3 KV heads, dim 64, fp32
PROMPTS = [
    "The capital of France is",
    "def add(a, b):\n    ",
    "Three primary colours are",
    "Once upon a time there was a little robot who",
]
REPEAT = "Repeat after me: one two three four five, one two three four five, one two three"
PARAMS = SamplingParams(max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def step_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("engine-steps")) / "steps.jsonl"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, step_log: Path) -> Iterator[RemoteServer]:
    log = Path(tmp_path_factory.mktemp("engine-server")) / "server.log"
    args = [
        "--step-log",
        str(step_log),
        "--quant",
        "fp32",
        "--speculative",
        "ngram",
        "--kv-cache-bytes",
        str(5 * BLOCK_BYTES),
        "--max-model-len",
        "64",
        "--max-num-seqs",
        "4",
        "--log-prompts",
    ]
    srv = start_server(args, log)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference() -> Iterator[Engine]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # share the two cores with the server child without thrashing
    try:
        yield Engine.load(LoadOptions(quant="fp32", device="cpu"))
    finally:
        torch.set_num_threads(threads)


def _body(prompt: str, stream: bool = False) -> dict:
    return {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": PARAMS.max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }


async def _complete_all(server: RemoteServer, prompts: list[str]) -> list[str]:
    async with httpx.AsyncClient(timeout=120) as client:
        rs = await asyncio.gather(
            *(client.post(server.url + "/v1/completions", json=_body(p), headers=server.headers) for p in prompts)
        )
    assert [r.status_code for r in rs] == [200] * len(prompts), [r.text for r in rs]
    return [r.json()["choices"][0]["text"] for r in rs]


def test_preemption_under_a_tiny_pool_keeps_outputs_exact(server: RemoteServer, reference: Engine) -> None:
    expected = [reference.generate(p, PARAMS).text for p in PROMPTS]
    assert asyncio.run(_complete_all(server, PROMPTS)) == expected
    m = server.metrics()
    assert m["preflight:num_preemptions_total"] > 0
    server.wait_metric("preflight:kv_cache_usage_perc", lambda v: v == 0.0)


def test_speculative_decoding_is_exact_when_streamed(server: RemoteServer, reference: Engine) -> None:
    expected = reference.generate(REPEAT, PARAMS).text
    with httpx.stream(
        "POST", server.url + "/v1/completions", json=_body(REPEAT, stream=True), headers=server.headers, timeout=60
    ) as r:
        chunks = [e for e in sse_events(r.iter_lines()) if isinstance(e, dict)]
    assert stream_text(chunks, chat=False) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert server.metrics()["preflight:spec_decode_acceptance_rate"] > 0
    assert f"prompt={REPEAT!r} output={expected!r}" in server.log_path.read_text()  # --log-prompts


def test_request_longer_than_the_pool_context_is_400(server: RemoteServer) -> None:
    r = server.post("/v1/completions", _body("word " * 70))
    assert r.status_code == 400
    assert "exceeds the model context of 64 tokens" in r.json()["error"]["message"]


def test_the_step_log_has_a_line_per_step_of_a_request(server: RemoteServer, step_log: Path) -> None:
    """`--step-log`: the request's prompt pass and its decode steps, each with its own time (other tests of the
    module share the server, so only lines that start after this request was sent are read)."""
    sent = time.monotonic()  # the server is a child on this machine: one monotonic clock
    r = server.post("/v1/completions", _body("A line per step: the log records") | {"max_tokens": 6})
    assert r.status_code == 200, r.text
    lines = [json.loads(line) for line in step_log.read_text().splitlines()]
    ours = [line for line in lines if line["t"] >= sent]
    assert sum(line["tokens"] for line in ours) == 6
    assert 0 < ours[0]["prefill_tokens"] <= r.json()["usage"]["prompt_tokens"] and ours[0]["sequences"] == 1
    assert all(line["prefill_tokens"] == 0 and line["decode_tokens"] >= 1 for line in ours[1:])
    assert all(0 < line["forward_ms"] <= line["step_ms"] for line in ours)
    assert [line["t"] for line in ours] == sorted(line["t"] for line in ours)
    assert ours[-1]["running"] == 0
