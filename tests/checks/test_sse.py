"""SSEParser: events are the same however the bytes are split, and every line form of the SSE spec is handled."""

from __future__ import annotations

import time

import pytest

from checks.load.sse import DONE, SSELimitError, SSEParser


def parse_split(data: bytes, *cuts: int) -> tuple[list[str], SSEParser]:
    """Feed `data` in pieces cut at `cuts`, then close; every event in order, and the parser."""
    parser = SSEParser()
    events: list[str] = []
    bounds = [0, *cuts, len(data)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        events += parser.feed(data[start:end])
    events += parser.close()
    return events, parser


STREAM = (
    'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n'
    'data: {"choices": [{"delta": {"content": "héllo → wörld 🙂"}}]}\n\n'
    ": keep-alive comment\n\n"
    "event: message\nid: 7\nretry: 100\n"
    "data: first line\ndata: second line\n\n"
    "data: [DONE]\n\n"
).encode()
EXPECTED = [
    '{"choices": [{"delta": {"role": "assistant"}}]}',
    '{"choices": [{"delta": {"content": "héllo → wörld 🙂"}}]}',
    "first line\nsecond line",
    DONE,
]


def test_whole_stream_in_one_piece() -> None:
    events, parser = parse_split(STREAM)
    assert events == EXPECTED
    assert parser.bytes_seen == len(STREAM)
    assert parser.non_sse_lines == 0


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_every_split_position_gives_the_same_events(newline: str) -> None:
    """Cuts land inside multi-byte UTF-8 characters (é, →, 🙂), inside CRLF pairs and between events."""
    data = STREAM.decode().replace("\n", newline).encode()
    multibyte = [i for i, b in enumerate(data) if b >= 0x80]
    assert multibyte, "the stream must hold multi-byte characters for this test to mean anything"
    for cut in range(len(data) + 1):
        events, parser = parse_split(data, cut)
        assert events == EXPECTED, f"split at byte {cut}"
        assert parser.bytes_seen == len(data)


def test_byte_at_a_time() -> None:
    data = STREAM.decode().replace("\n", "\r\n").encode()
    parser = SSEParser()
    events = [event for i in range(len(data)) for event in parser.feed(data[i : i + 1])]
    assert events + parser.close() == EXPECTED


def test_split_inside_a_four_byte_character_at_every_offset() -> None:
    data = "data: 🙂\n\n".encode()
    start = data.index("🙂".encode())
    for cut in range(start, start + 5):
        events, _ = parse_split(data, cut)
        assert events == ["🙂"], f"split at byte {cut}"


def test_crlf_split_between_cr_and_lf_does_not_end_the_event() -> None:
    """A CR at the end of a read may be half a CRLF: it ends its line at once, and the LF that follows in the next
    read is not a second line end (a blank line that would end the event early)."""
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"\n\r") == ["a\nb"]  # that CR ends the blank line: the event is complete now
    assert parser.feed(b"\n") == []
    assert parser.close() == []


def test_an_event_is_returned_as_soon_as_its_blank_line_arrives() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: 1\n") == []
    assert parser.feed(b"\ndata: 2\n\ndata: 3") == ["1", "2"]
    assert parser.close() == ["3"]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"])
def test_only_cr_and_lf_end_a_line(separator: str) -> None:
    """JSON may carry these unescaped in a string (model output); str.splitlines() would cut the event there."""
    payload = f'{{"choices": [{{"delta": {{"content": "a{separator}b"}}}}]}}'
    events, parser = parse_split(f"data: {payload}\n\n".encode())
    assert events == [payload]
    assert parser.non_sse_lines == 0


def test_comments_and_other_fields_are_skipped() -> None:
    data = b": ping\n:\nevent: update\nid: 1\nretry: 5\ndata: x\n\n: trailing comment\n\n"
    events, parser = parse_split(data)
    assert events == ["x"]
    assert parser.non_sse_lines == 0


def test_an_event_without_data_yields_nothing() -> None:
    events, _ = parse_split(b"event: ping\n\nid: 3\n\n\n\n")
    assert events == []


@pytest.mark.parametrize(
    ("line", "value"),
    [("data: x", "x"), ("data:x", "x"), ("data:  x", " x"), ("data:", ""), ("data: a: b", "a: b")],
)
def test_one_leading_space_is_stripped_from_the_value(line: str, value: str) -> None:
    events, _ = parse_split(f"{line}\n\n".encode())
    assert events == [value]


def test_multi_line_data_is_joined_with_newlines() -> None:
    events, _ = parse_split(b'data: {\ndata:   "a": 1\ndata: }\n\n')
    assert events == ['{\n  "a": 1\n}']


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (b"data: last", ["last"]),  # no line end at all
        (b"data: last\n", ["last"]),  # a line end but no blank line
        (b"data: last\r", ["last"]),  # a lone CR, held back as maybe half a CRLF
        (b"data: a\ndata: b\n", ["a\nb"]),
        (b"", []),
        (b"\n", []),
        (b": just a comment", []),
    ],
)
def test_close_without_a_final_blank_line(tail: bytes, expected: list[str]) -> None:
    parser = SSEParser()
    assert parser.feed(b"data: first\n\n" + tail) == ["first"]
    assert parser.close() == expected


def test_close_with_a_final_blank_line_returns_nothing_more() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: first\n\ndata: last\n\n") == ["first", "last"]
    assert parser.close() == []


def test_close_flushes_a_truncated_utf8_character_as_a_replacement() -> None:
    parser = SSEParser()
    assert parser.feed("data: é".encode()[:-1]) == []
    assert parser.close() == ["\ufffd"]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    events, _ = parse_split(b"data: \xff\xfe ok\n\n")
    assert events == ["\ufffd\ufffd ok"]


def test_non_sse_lines_are_counted() -> None:
    body = b"<!DOCTYPE html>\n<html><body>\n<h1>Welcome</h1>\n</body></html>\n"
    events, parser = parse_split(body)
    assert events == []
    assert parser.non_sse_lines == 4


def test_non_sse_lines_among_events_are_counted_and_skipped() -> None:
    events, parser = parse_split(b"garbage line\ndata: a\n\nmore garbage\n\ndata: b\n\n")
    assert events == ["a", "b"]
    assert parser.non_sse_lines == 2


def test_a_plain_json_body_yields_no_events() -> None:
    events, _ = parse_split(b'{"error": {"message": "nope"}}\n')
    assert events == []


# ---- bounds against a hostile server (issue 16, item 7) -----------------------------------------


def test_a_line_without_an_end_past_the_event_limit_is_an_error() -> None:
    parser = SSEParser(max_event_bytes=100)
    assert parser.feed(b"data: " + b"x" * 90) == []
    with pytest.raises(SSELimitError, match="passed 100 bytes"):
        parser.feed(b"x" * 10)


def test_data_lines_adding_up_past_the_event_limit_are_an_error() -> None:
    parser = SSEParser(max_event_bytes=100)
    parser.feed(b"data: " + b"a" * 40 + b"\n")
    parser.feed(b"data: " + b"b" * 40 + b"\n")
    with pytest.raises(SSELimitError, match="line or event"):
        parser.feed(b"data: " + b"c" * 40 + b"\n")


def test_events_under_the_limit_pass_and_the_count_restarts_per_event() -> None:
    parser = SSEParser(max_event_bytes=100)
    event = b"data: " + b"x" * 90 + b"\n\n"
    assert parser.feed(event * 50) == ["x" * 90] * 50


def test_a_response_past_its_limit_is_an_error() -> None:
    parser = SSEParser(max_response_bytes=1000)
    for _ in range(9):
        parser.feed(b"data: " + b"x" * 94 + b"\n\n")
    with pytest.raises(SSELimitError, match="response passed 1000 bytes"):
        parser.feed(b"data: " + b"x" * 94 + b"\n\n")


def test_a_long_line_costs_linear_time() -> None:
    """50 MiB that never ends a line, in 64 KiB reads: the old parser rescanned its whole buffer per read and took
    53 s of CPU here; scanning only the new bytes takes a fraction of a second. The bound is a generous hang detector
    on this thread's CPU time, not a speed figure."""
    parser = SSEParser(max_event_bytes=2**30, max_response_bytes=2**30)
    piece = b"x" * 65536
    started = time.thread_time()
    parser.feed(b"data: ")
    for _ in range(50 * 16):
        assert parser.feed(piece) == []
    assert time.thread_time() - started < 5.0
    assert parser.close() == ["x" * (50 * 2**20)]
