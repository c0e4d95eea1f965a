"""Incremental Server-Sent Events parsing for OpenAI-style streams, bounded against hostile servers.

Bytes arrive in arbitrary pieces: an event may be split across reads, a read may
hold several events, and a multi-byte UTF-8 character may straddle two reads.
`SSEParser.feed()` takes whatever arrived and returns the complete events' data
payloads; the caller stamps them all with that read's arrival time. Comments
(lines starting with ':') and fields other than `data` are skipped; several
`data:` lines of one event are joined with newlines, as the SSE spec says.

The parser works on bytes and decodes each complete line: SSE line ends are ASCII,
and no byte of a multi-byte UTF-8 character is CR or LF, so a line is always whole
characters. Each feed scans only its own bytes; the unfinished line is kept apart,
so a server that never sends a line end costs linear time, not a rescan of
everything per read. A line or event above `max_event_bytes`, or a response above
`max_response_bytes`, is `SSELimitError`: the client records the request as a
malformed stream and stops reading it.
"""

from __future__ import annotations

import re

DONE = "[DONE]"
MAX_EVENT_BYTES = 2**20  # one SSE line or event; an OpenAI chunk is a few hundred bytes
MAX_RESPONSE_BYTES = 64 * 2**20  # one whole response; 32k streamed tokens are about 8 MiB
# The only line ends SSE knows. str.splitlines() would also break at U+0085, U+2028, U+2029 and a few
# control characters, which JSON may carry unescaped inside a string (model output), cutting an event.
_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSELimitError(ValueError):
    """A line, an event or the whole response went past the parser's bound."""


class SSEParser:
    """Collect bytes until a blank line ends an event; return each event's data string."""

    __slots__ = (
        "_partial",
        "_data",
        "_event_bytes",
        "_after_cr",
        "max_event_bytes",
        "max_response_bytes",
        "bytes_seen",
        "non_sse_lines",
    )

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES, max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        if max_event_bytes < 1 or max_response_bytes < 1:
            raise ValueError("the SSE limits must be at least 1 byte")
        self.max_event_bytes = max_event_bytes
        self.max_response_bytes = max_response_bytes
        self._partial = bytearray()  # the line not yet ended
        self._data: list[str] = []  # data lines of the event not yet ended
        self._event_bytes = 0  # bytes of those data lines
        self._after_cr = False  # the last byte seen was a CR: a LF right after it is the same line end
        self.bytes_seen = 0
        self.non_sse_lines = 0  # lines that are neither a field nor a comment: a sign the body is not SSE

    def feed(self, chunk: bytes) -> list[str]:
        """Data payloads of the events completed by `chunk`, in order; SSELimitError past a bound."""
        if not chunk:
            return []
        self.bytes_seen += len(chunk)
        if self.bytes_seen > self.max_response_bytes:
            raise SSELimitError(f"the response passed {self.max_response_bytes} bytes (--max-response-bytes)")
        start = 1 if self._after_cr and chunk[:1] == b"\n" else 0
        events: list[str] = []
        for end in _LINE_END.finditer(chunk, start):
            self._end_line(chunk, start, end.start(), events)
            start = end.end()
        self._after_cr = chunk[-1:] == b"\r"
        if start < len(chunk):
            self._partial += chunk[start:]
            self._check_size(len(self._partial))
        return events

    def close(self) -> list[str]:
        """Events left when the stream ends without a final blank line (lenient, as clients are)."""
        events: list[str] = []
        if self._partial.strip():
            self._end_line(b"", 0, 0, events)
        self._partial = bytearray()
        if self._data:
            self._end_line(b"", 0, 0, events)  # the blank line the stream never sent
        return events

    def _check_size(self, line_bytes: int) -> None:
        if self._event_bytes + line_bytes > self.max_event_bytes:
            raise SSELimitError(f"an SSE line or event passed {self.max_event_bytes} bytes (--max-event-bytes)")

    def _end_line(self, chunk: bytes, start: int, stop: int, events: list[str]) -> None:
        """The line made of the kept partial line plus chunk[start:stop] has ended: take it."""
        if self._partial:
            self._partial += chunk[start:stop]
            raw, self._partial = bytes(self._partial), bytearray()
        else:
            raw = chunk[start:stop]
        self._check_size(len(raw))
        if not raw:
            if self._data:
                events.append("\n".join(self._data))
                self._data, self._event_bytes = [], 0
            return
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return
        name, sep, value = line.partition(":")
        if not sep:
            self.non_sse_lines += 1
            return
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
            self._event_bytes += len(raw)
