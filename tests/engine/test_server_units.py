"""Server pieces that need no model and no socket: options, bind check, limiter, request bodies, CLI,
and the engine thread with its request streams (driven by a scripted engine)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.batch.batch_engine import KvStats, StepResult, TokenOutput
from engine.batch.loop import BatchLoop, Delta, EngineFailure, RequestStream
from engine.cli import main
from engine.sampling import SamplingParams
from engine.serving.api_models import ChatCompletionRequest, CompletionRequest
from engine.serving.errors import describe_validation_error
from engine.serving.options import RequestLimits, ServerOptions, check_exposure, is_loopback, model_id
from engine.serving.security import TokenBucketLimiter


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"),
        ("tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf", "tinyllama-1.1b-chat-v1.0"),
        ("Llama-3.2-1B-Instruct-f16.gguf", "llama-3.2-1b-instruct"),
        ("my model.gguf", "my-model"),
    ],
)
def test_model_id_from_file_name(file_name: str, expected: str) -> None:
    assert model_id(Path("/models") / file_name) == expected


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_non_loopback_needs_a_key_or_insecure() -> None:
    with pytest.raises(ValueError, match="refusing to listen on 0.0.0.0 without an API key"):
        check_exposure("0.0.0.0", None, insecure=False)
    check_exposure("0.0.0.0", "k", insecure=False)
    check_exposure("0.0.0.0", None, insecure=True)
    check_exposure("127.0.0.1", None, insecure=False)


def test_options_hide_the_key_and_refuse_an_empty_one() -> None:
    opts = ServerOptions(api_key="s3cret", host="0.0.0.0")
    assert "s3cret" not in repr(opts) and opts.key == "s3cret"
    with pytest.raises(ValidationError, match="API key is empty"):
        ServerOptions(api_key="  ")
    with pytest.raises(ValidationError):
        ServerOptions(unknown=1)  # type: ignore[call-arg]
    assert ServerOptions(rate_limit_rpm=60).rate_limit_bucket == 10
    assert ServerOptions(rate_limit_rpm=3).rate_limit_bucket == 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_bursts_then_refills() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(rpm=60, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(1.0)  # one token per second
    assert limiter.acquire("b") == 0.0  # clients are independent
    clock.now += 0.5
    assert limiter.acquire("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.acquire("a") == 0.0
    clock.now += 1000
    assert [limiter.acquire("a") for _ in range(4)][-1] > 0  # refills only up to the burst


def test_token_bucket_forgets_idle_clients_when_full() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(rpm=60, burst=1, clock=clock)
    limiter.MAX_CLIENTS = 4
    for name in "abcd":
        limiter.acquire(name)
    clock.now += 10
    limiter.acquire("e")
    assert set(limiter._buckets) == {"e"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m", "prompt": "x", "n": 3}, "n: only n=1 is supported"),
        ({"model": "m", "prompt": "x", "wat": 1}, "wat: unknown parameter"),
        ({"prompt": "x"}, "model: this field is required"),
        ({"model": "m", "prompt": "x", "logprobs": 2}, "logprobs: top alternatives are not returned"),
        ({"model": "m", "prompt": "x", "frequency_penalty": 1}, "use repetition_penalty"),
        ({"model": "m", "prompt": "x", "temperature": "hot"}, "temperature: Input should be a valid number"),
    ],
)
def test_completion_body_errors_name_the_field(body: dict, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate(body)
    text, _param = describe_validation_error(info.value)
    assert message in text
    assert "hot" not in text.replace("temperature", "")  # the input value is not echoed


def test_openai_defaults_and_extensions_map_to_sampling_params() -> None:
    body = CompletionRequest.model_validate({"model": "m", "prompt": "x"})
    params = body.sampling_params(16)
    assert (params.temperature, params.top_p, params.max_tokens, params.logprobs) == (1.0, 1.0, 16, False)
    body = CompletionRequest.model_validate(
        {
            "model": "m",
            "prompt": "x",
            "temperature": 0,
            "top_k": -1,
            "min_p": 0.1,
            "repetition_penalty": 1.1,
            "stop": "\n",
            "seed": 3,
            "logprobs": 0,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }
    )
    params = body.sampling_params(4)
    assert params.greedy and params.top_k == 0 and params.min_p == 0.1 and params.repetition_penalty == 1.1
    assert params.stop == ("\n",) and params.seed == 3 and params.logprobs and params.ignore_eos
    assert body.include_usage


def test_chat_body_accepts_what_the_sdk_sends() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
                {"role": "user", "content": "hi", "name": "ann"},
            ],
            "max_completion_tokens": 5,
            "max_tokens": 9,
            "user": "u1",
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "stream": True,
            "stream_options": {"include_usage": True, "include_obfuscation": False},
            "logprobs": True,
            "top_logprobs": 0,
            "n": 1,
            "seed": 1,
        }
    )
    assert body.requested_max_tokens() == 5
    assert body.messages[0].as_template_message() == {"role": "system", "content": "be brief"}
    assert body.sampling_params(5).logprobs


def test_messages_over_the_cap_are_refused_before_they_are_parsed() -> None:
    default = RequestLimits().max_messages
    messages = [{"role": "user", "content": ""}] * (default + 1)
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({"model": "m", "messages": messages})
    text, param = describe_validation_error(info.value)
    assert text == f"messages: at most {default} messages are allowed per request (the server's --max-messages)"
    assert param == "messages"
    body = {"model": "m", "messages": messages}
    assert len(ChatCompletionRequest.model_validate(body, context=RequestLimits(max_messages=default + 1)).messages)
    with pytest.raises(ValidationError, match="at most 2 messages"):  # an oversized list of junk: counted first
        ChatCompletionRequest.model_validate({"model": "m", "messages": [1, 2, 3]}, context=RequestLimits(2))


def test_stop_strings_over_the_length_cap_are_refused() -> None:
    longest = RequestLimits().max_stop_chars
    ok = CompletionRequest.model_validate({"model": "m", "prompt": "x", "stop": ["\n", "x" * longest]})
    assert ok.stop_strings == ("\n", "x" * longest)
    for stop in ("x" * (longest + 1), ["\n", "y" * (longest + 1)]):
        with pytest.raises(ValidationError) as info:
            CompletionRequest.model_validate({"model": "m", "prompt": "x", "stop": stop})
        text, _param = describe_validation_error(info.value)
        assert text == f"stop: a stop string may be at most {longest} characters long (the server's --max-stop-chars)"
    tight = RequestLimits(max_stop_chars=3)
    with pytest.raises(ValidationError, match="at most 3 characters"):
        ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": "four"}, context=tight
        )


def test_request_limits_are_server_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--max-stop-chars", "0"]) == 1
    assert capsys.readouterr().err == "error: max_stop_chars: Input should be greater than or equal to 1\n"
    options = ServerOptions(max_messages=5, max_stop_chars=7, max_template_chars=2048, template_timeout_s=0.5)
    assert options.request_limits == RequestLimits(5, 7)
    assert (options.template_limits.max_chars, options.template_limits.timeout_s) == (2048, 0.5)
    defaults = ServerOptions()
    assert defaults.request_limits == RequestLimits()


def test_cli_refuses_public_bind_without_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFLIGHT_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to listen on 0.0.0.0 without an API key: anyone who can reach")
    assert err.count("\n") == 1


def test_cli_rejects_bad_option_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--max-num-seqs", "0"]) == 1
    assert capsys.readouterr().err == "error: max_num_seqs: Input should be greater than or equal to 1\n"
    assert main(["serve", "--model", "/nonexistent/model.gguf"]) == 1
    assert "error:" in capsys.readouterr().err


# ---- the engine thread and request streams, driven by a scripted engine (no model) -----------

VOCAB = {0: "a", 1: "b", 2: "c", 3: " ", 4: "d"}


class ScriptedLLM:
    """Duck-types BatchEngine: every request emits `tokens`, one per step, then finishes with "length"."""

    def __init__(self, tokens: list[int], fail_steps: int = 0) -> None:
        self.tokens = tokens
        self.fail_steps = fail_steps
        self.live: dict[int, list[int]] = {}
        self.next_id = 0
        self.aborted: list[int] = []
        self.finished: list[int] = []

    def add_request(self, prompt_ids: list[int], params: SamplingParams) -> int:
        seq_id, self.next_id = self.next_id, self.next_id + 1
        self.live[seq_id] = list(self.tokens)
        return seq_id

    def abort(self, seq_id: int) -> None:
        if self.live.pop(seq_id, None) is not None:
            self.aborted.append(seq_id)

    def finish(self, seq_id: int) -> None:
        if self.live.pop(seq_id, None) is not None:
            self.finished.append(seq_id)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.live)

    def step(self) -> StepResult:
        time.sleep(0.001)  # like a model step: the asyncio side keeps up
        if self.fail_steps:
            self.fail_steps -= 1
            raise RuntimeError("scripted failure")
        outputs = []
        for seq_id, rest in list(self.live.items()):
            token = rest.pop(0)
            if not rest:
                del self.live[seq_id]
            outputs.append(TokenOutput(seq_id, [token], [-0.5], not rest, None if rest else "length"))
        return StepResult(outputs=outputs)

    def kv_stats(self) -> KvStats:
        return KvStats(
            num_running=len(self.live),
            num_waiting=0,
            kv_cache_usage=0.0,
            num_free_blocks=0,
            prefix_cache_hit_rate=None,
            num_preemptions=0,
            spec_acceptance_rate=None,
            kv_cache_bytes=0,
        )


class CharDecoder:
    def push(self, token_id: int) -> str:
        return VOCAB[token_id]

    def flush(self) -> str:
        return ""


class CharTokenizer:
    def stream_decoder(self) -> CharDecoder:
        return CharDecoder()


async def _run_stream(loop: BatchLoop, params: SamplingParams) -> tuple[list[Delta], RequestStream]:
    stream = await RequestStream.open(loop, CharTokenizer(), [1, 2], params, 0.0)  # type: ignore[arg-type]
    return [d async for d in stream.deltas()], stream


@pytest.fixture
def scripted() -> Iterator[Callable[..., tuple[ScriptedLLM, BatchLoop]]]:
    loops: list[BatchLoop] = []

    def make(tokens: list[int], fail_steps: int = 0) -> tuple[ScriptedLLM, BatchLoop]:
        llm = ScriptedLLM(tokens, fail_steps)
        loop = BatchLoop(llm)  # type: ignore[arg-type]
        loop.start()
        loops.append(loop)
        return llm, loop

    yield make
    for loop in loops:
        assert loop.stop(5)


def test_stream_delivers_tokens_text_and_logprobs(scripted: Callable) -> None:
    _llm, loop = scripted([0, 1, 2])
    deltas, stream = asyncio.run(_run_stream(loop, SamplingParams(max_tokens=3, logprobs=True)))
    assert "".join(d.text for d in deltas) == "abc"
    assert [d.finish_reason for d in deltas][-1] == "length"
    assert sum(len(d.token_ids) for d in deltas) == stream.completion_tokens == 3
    assert [lp for d in deltas for lp in d.logprobs or []] == [-0.5] * 3


def test_stop_string_across_tokens_is_held_back_cut_and_finished(scripted: Callable) -> None:
    llm, loop = scripted([0, 1, 3, 2, 4] + [0] * 2000)  # "ab cdaaa..."

    async def run() -> tuple[list[Delta], RequestStream]:
        result = await _run_stream(loop, SamplingParams(max_tokens=2005, stop=(" cd",)))
        for _ in range(500):  # keep this event loop open while the engine applies the finish
            if llm.finished:
                break
            await asyncio.sleep(0.01)
        return result

    deltas, stream = asyncio.run(run())
    assert [d.text for d in deltas] == ["a", "b", ""]  # " " and "c" were held back, then cut
    assert deltas[-1].finish_reason == stream.finish_reason == "stop"
    assert stream.completion_tokens == 5
    assert llm.finished == [0] and not llm.aborted


def test_consumer_leaving_aborts_the_sequence(scripted: Callable) -> None:
    llm, loop = scripted(list(range(5)) * 200)

    async def leave_early() -> None:
        params = SamplingParams(max_tokens=999)
        stream = await RequestStream.open(loop, CharTokenizer(), [1], params, 0.0)  # type: ignore[arg-type]
        async for _delta in stream.deltas():
            break

    asyncio.run(leave_early())
    deadline = time.monotonic() + 5
    while llm.aborted != [0]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not llm.live


def test_a_failing_step_fails_its_requests_but_not_the_loop(scripted: Callable) -> None:
    _llm, loop = scripted([0, 1], fail_steps=1)
    with pytest.raises(EngineFailure, match="failed while running"):
        asyncio.run(_run_stream(loop, SamplingParams(max_tokens=2)))
    assert loop.alive
    deltas, _ = asyncio.run(_run_stream(loop, SamplingParams(max_tokens=2)))
    assert "".join(d.text for d in deltas) == "ab"


def test_requests_after_stop_fail_fast(scripted: Callable) -> None:
    _llm, loop = scripted([0])
    assert loop.stop(5)
    with pytest.raises(EngineFailure, match="not running"):
        asyncio.run(_run_stream(loop, SamplingParams(max_tokens=1)))
