"""StreamClient against planted-fault servers on 127.0.0.1: timing invariants, what goes on the wire, every failure.

STYLE.md §8 pins three timing invariants: (e2e - ttft) == sum(itl), the usage chunk
does not stretch latency, and role-only chunks do not set TTFT. Each failure kind
of STYLE.md §4 comes back as a record (kind, HTTP status, excerpt), never as an
exception out of `send()`. Time bounds below are only lower bounds set by the
server's own sleeps, or generous deadlines that keep a hung client from hanging
the suite.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from fault_server import HOSTILE_PAGE, Behaviour, FaultServer, Script

from checks.load.client import RequestOptions, StreamClient, build_payload
from checks.load.endpoint import Endpoint
from checks.load.prompts import PromptRequest
from checks.load.targets import free_port
from checks.load.tokenizer import TextTokenizer, bundled_tokenizer
from checks.readiness.streams import StreamEnd, new_session, run_stream, stream_body
from reports.records import ERROR_EXCERPT_CHARS, ErrorKind, RequestRecord, TokenSource

PROMPT = PromptRequest("say three words", None, max_tokens=8, input_tokens=99, ignore_eos=True, source="test#0")
CHAT = PromptRequest(
    None,
    ({"role": "system", "content": "be brief"}, {"role": "user", "content": "say three words"}),
    max_tokens=8,
    input_tokens=None,
    ignore_eos=False,
    source="test#chat",
)
TIMEOUT_S = 30.0  # a generous per-request deadline: a stuck client fails a test instead of hanging it
# Hang detectors: a stall far longer than any deadline a test sets (waiting it out is the bug), and a bound
# on what takes a fraction of a second, generous enough for a loaded 2-core machine.
STALL_S = 120.0
HANG_S = 30.0


def endpoint(server: FaultServer, **kwargs: object) -> Endpoint:
    kwargs.setdefault("request_timeout_s", TIMEOUT_S)
    return Endpoint(server.base_url, "fault-model", **kwargs)  # type: ignore[arg-type]


def send_all(
    ep: Endpoint,
    requests: list[PromptRequest],
    tokenizer: TextTokenizer | None = None,
    options: RequestOptions | None = None,
) -> list[RequestRecord]:
    """Send `requests` one after another through one client; every record, in order."""

    async def go() -> list[RequestRecord]:
        async with StreamClient(ep, time.perf_counter(), tokenizer, options) as client:
            return [await client.send(i, r, client.now()) for i, r in enumerate(requests)]

    return asyncio.run(go())


def send_one(script: Script | Behaviour, request: PromptRequest = PROMPT, **kwargs: object) -> RequestRecord:
    with FaultServer(script) as server:
        (record,) = send_all(endpoint(server, **kwargs), [request])
    return record


def assert_failed(record: RequestRecord, kind: ErrorKind, status: int | None) -> None:
    """A failure record: its kind and status, an excerpt, and no timing or token figures."""
    assert not record.ok
    assert record.error_kind is kind, record.error_excerpt
    assert record.http_status == status
    assert record.error_excerpt and len(record.error_excerpt) <= ERROR_EXCERPT_CHARS
    assert record.first_token_s is None and record.ttft_s is None and record.tpot_s is None
    assert record.chunk_times_s == [] and record.chunk_tokens == []
    assert record.output_tokens is None and record.token_source is None
    assert record.end_s is not None and record.end_s >= record.send_s >= record.ready_s


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return bundled_tokenizer()


# ---- pinned timing invariants -------------------------------------------------------------------


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_e2e_minus_ttft_is_the_sum_of_itls(api: str) -> None:
    script = Script(chunks=6, chunk_delay_s=0.01)
    record = send_one(script, api=api)
    assert record.ok, record.error_excerpt
    assert record.http_status == 200 and record.error_kind is None and record.error_excerpt is None
    assert len(record.chunk_times_s) == len(record.chunk_tokens) == 6
    assert record.chunk_times_s == sorted(record.chunk_times_s)
    assert record.first_token_s == record.chunk_times_s[0]
    assert record.end_s == record.chunk_times_s[-1]
    assert len(record.itl_s) == 5
    assert abs((record.e2e_s - record.ttft_s) - sum(record.itl_s)) <= 1e-9
    assert record.ttft_s > 0
    assert record.output_chars == len("tok ") * 6


def test_usage_chunk_does_not_stretch_latency() -> None:
    usage_delay_s = 0.3
    with FaultServer(Script(chunks=3, usage_delay_s=usage_delay_s)) as server:
        started = time.perf_counter()
        (record,) = send_all(endpoint(server), [PROMPT])
        elapsed = time.perf_counter() - started
    assert record.ok, record.error_excerpt
    assert record.token_source is TokenSource.USAGE  # the usage chunk did arrive, after its delay
    assert record.end_s == record.chunk_times_s[-1]
    assert elapsed - record.e2e_s >= usage_delay_s * 0.9
    assert abs((record.e2e_s - record.ttft_s) - sum(record.itl_s)) <= 1e-9


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_opening_chunk_without_content_does_not_set_ttft(api: str) -> None:
    """The role-only (chat) or empty-text (completions) chunk comes at once; the first content a delay later."""
    delay_s = 0.15
    record = send_one(Script(chunks=2, chunk_delay_s=delay_s), api=api)
    assert record.ok, record.error_excerpt
    assert len(record.chunk_times_s) == 2  # the opening and finish chunks carry no content
    # The server sleeps delay_s before the first content; an event loop may wake a little early
    # (its clock resolution), so the bound keeps a margin: an opening chunk taken as TTFT reads ~0.
    assert record.ttft_s >= 0.9 * delay_s
    assert record.itl_s[0] >= 0.9 * delay_s


# ---- token counts and where they came from ------------------------------------------------------


def test_usage_gives_the_token_counts() -> None:
    record = send_one(Script(chunks=4))
    assert record.token_source is TokenSource.USAGE
    assert record.output_tokens == 4
    assert record.chunk_tokens == [1, 1, 1, 1]
    assert record.input_tokens == 3  # the server's prompt_tokens, not the workload's 99
    assert record.tpot_s == pytest.approx((record.e2e_s - record.ttft_s) / 3)


def test_several_tokens_per_chunk_with_usage() -> None:
    record = send_one(Script(chunks=4, tokens_per_chunk=3))
    assert record.token_source is TokenSource.USAGE
    assert record.output_tokens == 12
    assert record.chunk_tokens == [3, 3, 3, 3]


def test_several_tokens_per_chunk_with_usage_and_a_tokenizer(tokenizer: TextTokenizer) -> None:
    with FaultServer(Script(chunks=4, tokens_per_chunk=3)) as server:
        (record,) = send_all(endpoint(server), [PROMPT], tokenizer)
    assert record.token_source is TokenSource.USAGE
    assert record.output_tokens == 12
    assert sum(record.chunk_tokens) == 12
    assert all(n >= 1 for n in record.chunk_tokens)


def test_without_stream_usage_no_stream_options_and_tokens_from_the_tokenizer(tokenizer: TextTokenizer) -> None:
    with FaultServer(Script(chunks=5)) as server:
        (record,) = send_all(endpoint(server, supports_stream_usage=False), [PROMPT], tokenizer)
        (sent,) = server.requests
    assert "stream_options" not in sent.body
    assert record.ok, record.error_excerpt
    assert record.token_source is TokenSource.TOKENIZER
    # Counted chunk by chunk (a real server streams one token per chunk; re-encoding the joined
    # text would merge tokens the model emitted apart), so the total is the sum of the chunks.
    assert record.output_tokens == 5 * len(tokenizer.encode("tok "))
    assert sum(record.chunk_tokens) == record.output_tokens


def test_without_stream_usage_or_tokenizer_one_token_per_chunk() -> None:
    with FaultServer(Script(chunks=5, tokens_per_chunk=2)) as server:
        (record,) = send_all(endpoint(server, supports_stream_usage=False), [PROMPT])
        (sent,) = server.requests
    assert "stream_options" not in sent.body
    assert record.token_source is TokenSource.CHUNKS
    assert record.output_tokens == 5
    assert record.chunk_tokens == [1] * 5


def test_stream_usage_is_asked_for_when_supported() -> None:
    with FaultServer(Script()) as server:
        send_all(endpoint(server), [PROMPT])
        (sent,) = server.requests
    assert sent.body["stream_options"] == {"include_usage": True}


# ---- what goes on the wire ----------------------------------------------------------------------


def test_authorization_header_carries_the_key() -> None:
    with FaultServer(Script()) as server:
        ep = endpoint(server, api_key="sk-test-123")
        (record,) = send_all(ep, [PROMPT])
        (sent,) = server.requests
    assert record.ok
    assert sent.headers["authorization"] == "Bearer sk-test-123"
    assert "sk-test-123" not in repr(ep)
    assert "sk-test-123" not in ep.redacted().model_dump_json()


def test_no_authorization_header_without_a_key() -> None:
    with FaultServer(Script()) as server:
        send_all(endpoint(server), [PROMPT])
        (sent,) = server.requests
    assert "authorization" not in sent.headers
    assert sent.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("asks", "supported", "sent"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_ignore_eos_only_when_asked_and_supported(asks: bool, supported: bool, sent: bool) -> None:
    request = replace(PROMPT, ignore_eos=asks)
    with FaultServer(Script()) as server:
        (record,) = send_all(endpoint(server, supports_ignore_eos=supported), [request])
        (received,) = server.requests
    assert record.ok
    assert ("ignore_eos" in received.body) is sent
    if sent:
        assert received.body["ignore_eos"] is True


def test_chat_payload_from_a_prompt_and_from_messages() -> None:
    with FaultServer(Script()) as server:
        records = send_all(endpoint(server, api="chat"), [PROMPT, CHAT])
        from_prompt, from_messages = server.requests
    assert all(r.ok for r in records)
    for received in (from_prompt, from_messages):
        assert received.method == "POST" and received.path == "/v1/chat/completions"
        assert received.body["model"] == "fault-model"
        assert received.body["stream"] is True
        assert received.body["max_tokens"] == 8
        assert "prompt" not in received.body
    assert from_prompt.body["messages"] == [{"role": "user", "content": "say three words"}]
    assert from_messages.body["messages"] == list(CHAT.messages)


def test_completions_payload() -> None:
    with FaultServer(Script()) as server:
        (record,) = send_all(endpoint(server, api="completions"), [PROMPT])
        (received,) = server.requests
    assert record.ok
    assert received.path == "/v1/completions"
    assert received.body["prompt"] == "say three words"
    assert "messages" not in received.body
    assert received.body["stream"] is True


def test_chat_messages_to_the_completions_api_is_a_value_error() -> None:
    ep = Endpoint("http://127.0.0.1:9", "m", api="completions")
    with pytest.raises(ValueError, match="chat messages cannot go to the completions API"):
        build_payload(ep, CHAT, RequestOptions())


def test_sampling_options_are_sent_only_when_set() -> None:
    with FaultServer(Script()) as server:
        send_all(endpoint(server), [PROMPT], options=RequestOptions(temperature=0.0, seed=7))
        (received,) = server.requests
    assert received.body["temperature"] == 0.0
    assert received.body["seed"] == 7
    assert "top_p" not in received.body


def test_send_outside_the_context_is_an_error() -> None:
    client = StreamClient(Endpoint("http://127.0.0.1:9", "m"), time.perf_counter())
    with pytest.raises(RuntimeError, match="async with"):
        asyncio.run(client.send(0, PROMPT, 0.0))


# ---- every failure kind is a record -------------------------------------------------------------


def test_http_500_every_kth_request() -> None:
    with FaultServer(Script(Behaviour.HTTP_500_EVERY_K, every_k=2)) as server:
        records = send_all(endpoint(server), [PROMPT] * 4)
    assert [r.ok for r in records] == [True, False, True, False]
    for number, record in ((2, records[1]), (4, records[3])):
        assert_failed(record, ErrorKind.HTTP, 500)
        assert f"internal error on completion request {number}" in record.error_excerpt
        assert "server_error" in record.error_excerpt


@pytest.mark.parametrize("status", [401, 404, 429])
def test_http_status(status: int) -> None:
    record = send_one(Script(Behaviour.HTTP_STATUS, status=status))
    assert_failed(record, ErrorKind.HTTP, status)
    assert f"planted fault: HTTP {status}" in record.error_excerpt


def test_garbage_sse_is_a_malformed_stream() -> None:
    record = send_one(Behaviour.GARBAGE_SSE)
    assert_failed(record, ErrorKind.MALFORMED_STREAM, 200)
    assert "not JSON" in record.error_excerpt


def test_not_sse_is_a_malformed_stream_naming_the_body_but_not_echoing_it() -> None:
    """Only a JSON body is echoed (issue 16, item 11): an HTML page is named by type and size."""
    record = send_one(Behaviour.NOT_SSE)
    assert_failed(record, ErrorKind.MALFORMED_STREAM, 200)
    assert record.error_excerpt.startswith("not an SSE stream of OpenAI chunks: a text/html body of ")
    assert "<" not in record.error_excerpt


def test_a_non_json_error_body_is_not_echoed() -> None:
    """A gateway's HTML error page with terminal escape codes: the record names it, the bytes stay out."""
    record = send_one(Script(Behaviour.HTTP_STATUS, status=502, html_error=True))
    assert_failed(record, ErrorKind.HTTP, 502)
    assert record.error_excerpt == f"a text/html body of {len(HOSTILE_PAGE.encode())} bytes, not shown (only JSON is)"


def test_error_event_in_a_200_stream() -> None:
    record = send_one(Script(Behaviour.ERROR_EVENT, chunks_before_fault=2))
    assert_failed(record, ErrorKind.STREAM_ERROR, 200)
    assert "boom" in record.error_excerpt
    assert record.output_chars == len("tok ") * 2  # what did stream before the error is not hidden


def test_empty_stream() -> None:
    record = send_one(Behaviour.EMPTY_STREAM)
    assert_failed(record, ErrorKind.EMPTY_STREAM, 200)


def test_stall_is_a_timeout() -> None:
    started = time.perf_counter()
    record = send_one(Script(Behaviour.STALL, stall_s=STALL_S), request_timeout_s=0.5)
    assert time.perf_counter() - started < HANG_S  # the deadline fired; the stall was not waited out
    assert_failed(record, ErrorKind.TIMEOUT, 200)
    assert "0.5 s" in record.error_excerpt
    assert record.e2e_s >= 0.5


def test_die_after_n_gives_connection_errors_after_n() -> None:
    with FaultServer(Script(Behaviour.DIE_AFTER_N, ok_requests=2)) as server:
        records = send_all(endpoint(server), [PROMPT] * 4)
    assert [r.ok for r in records] == [True, True, False, False]
    for record in records[2:]:
        assert_failed(record, ErrorKind.CONNECTION, None)


def test_drop_mid_stream_is_never_ok() -> None:
    record = send_one(Script(Behaviour.DROP_MID_STREAM, chunks_before_fault=2))
    assert not record.ok
    assert record.error_kind in (ErrorKind.CONNECTION, ErrorKind.MALFORMED_STREAM)
    assert_failed(record, record.error_kind, 200)


def test_slow_first_byte_is_ok_with_ttft_above_the_delay() -> None:
    delay_s = 0.3
    record = send_one(Script(Behaviour.SLOW_FIRST_BYTE, first_byte_delay_s=delay_s))
    assert record.ok, record.error_excerpt
    assert record.ttft_s >= delay_s


def test_nothing_listening_is_a_connection_error() -> None:
    ep = Endpoint(f"http://127.0.0.1:{free_port()}", "fault-model", request_timeout_s=TIMEOUT_S)
    (record,) = send_all(ep, [PROMPT])
    assert_failed(record, ErrorKind.CONNECTION, None)


def test_concurrent_sends_on_one_client() -> None:
    """send() from many tasks at once: each gets its own record; failures do not spill into other requests."""
    with FaultServer(Script(Behaviour.HTTP_500_EVERY_K, every_k=3, chunk_delay_s=0.01)) as server:

        async def go() -> list[RequestRecord]:
            async with StreamClient(endpoint(server), time.perf_counter()) as client:
                return await asyncio.gather(*(client.send(i, PROMPT, 0.0) for i in range(6)))

        records = asyncio.run(go())
    assert [r.request_id for r in records] == list(range(6))
    assert sum(r.ok for r in records) == 4
    for record in records:
        if not record.ok:
            assert_failed(record, ErrorKind.HTTP, 500)
        else:
            assert record.output_tokens == 4


# ---- a hostile server is bounded (issue 16, items 7 and 8) ------------------------------------------


def test_a_line_that_never_ends_is_a_malformed_stream_at_the_event_limit() -> None:
    """50 MiB without a line end: the request fails once 1 MiB is buffered; the old client read all 50 MiB and spent
    53 s of CPU rescanning it. The CPU bound is a generous hang detector on this thread, which runs the client."""
    started = time.thread_time()
    record = send_one(Script(Behaviour.ENDLESS_LINE, line_bytes=50 * 2**20))
    assert time.thread_time() - started < HANG_S
    assert_failed(record, ErrorKind.MALFORMED_STREAM, 200)
    assert f"passed {2**20} bytes (--max-event-bytes)" in record.error_excerpt


def test_the_event_limit_is_an_option() -> None:
    record = send_one(Script(Behaviour.ENDLESS_LINE, line_bytes=5000), max_event_bytes=4096)
    assert_failed(record, ErrorKind.MALFORMED_STREAM, 200)
    assert "passed 4096 bytes" in record.error_excerpt
    ok = send_one(Script(tokens_per_chunk=50), max_event_bytes=4096)
    assert ok.ok, ok.error_excerpt


def test_an_answer_past_the_response_limit_is_a_malformed_stream() -> None:
    record = send_one(Script(chunks=200), max_response_bytes=4096)
    assert_failed(record, ErrorKind.MALFORMED_STREAM, 200)
    assert "the response passed 4096 bytes (--max-response-bytes)" in record.error_excerpt


def test_no_byte_for_the_read_timeout_is_a_timeout_before_the_total_one() -> None:
    started = time.perf_counter()
    record = send_one(Script(Behaviour.STALL, stall_s=STALL_S), request_timeout_s=2 * HANG_S, read_timeout_s=0.5)
    assert time.perf_counter() - started < HANG_S  # the read timeout fired; neither the stall nor the total was waited
    assert_failed(record, ErrorKind.TIMEOUT, 200)
    assert record.error_excerpt == "no byte of the answer for 0.5 s (the read timeout)"


def test_a_deeply_nested_event_is_a_malformed_stream() -> None:
    """json.loads raises RecursionError here, which escaped the client and cost the run every record."""
    record = send_one(Script(Behaviour.DEEP_NESTING, depth=100_000))
    assert_failed(record, ErrorKind.MALFORMED_STREAM, 200)
    assert "nested too deeply" in record.error_excerpt


@pytest.mark.parametrize(
    ("script", "error"),
    [
        (Script(Behaviour.ENDLESS_LINE, line_bytes=4 * 2**20), f"an SSE line or event passed {2**20} bytes"),
        (Script(Behaviour.DEEP_NESTING), "an event nested too deeply to parse"),
        (Script(Behaviour.HTTP_STATUS, status=502, html_error=True), "a text/html body of "),
    ],
    ids=["endless-line", "deep-nesting", "html-error"],
)
def test_the_checklists_stream_reader_is_bounded_the_same_way(script: Script, error: str) -> None:
    """checks/readiness/streams.py reads streams with the same parser: a hostile answer is its StreamEnd's error,
    never an exception out of run_stream, and a non-JSON body is not echoed."""
    with FaultServer(script) as server:
        ep = endpoint(server)

        async def go() -> StreamEnd:
            async with new_session(TIMEOUT_S) as session:
                return await run_stream(session, ep, stream_body(ep, 8))

        end = asyncio.run(go())
    assert end.error is not None and end.error.startswith(error)
    assert not end.completed
