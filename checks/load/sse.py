"""Incremental Server-Sent Events parsing for OpenAI-style streams.

Bytes arrive in arbitrary pieces: an event may be split across reads, a read may
hold several events, and a multi-byte UTF-8 character may straddle two reads.
`SSEParser.feed()` takes whatever arrived and returns the complete events' data
payloads; the caller stamps them all with that read's arrival time. Comments
(lines starting with ':') and fields other than `data` are skipped; several
`data:` lines of one event are joined with newlines, as the SSE spec says.
"""

from __future__ import annotations

import codecs
import re

DONE = "[DONE]"
# The only line ends SSE knows. str.splitlines() would also break at U+0085, U+2028, U+2029 and a few
# control characters, which JSON may carry unescaped inside a string (model output), cutting an event.
_LINE_END = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """Buffer bytes until a blank line ends an event; yield each event's data string."""

    __slots__ = ("_decoder", "_buffer", "_data", "bytes_seen", "non_sse_lines")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []
        self.bytes_seen = 0
        self.non_sse_lines = 0  # lines that are neither a field nor a comment: a sign the body is not SSE

    def feed(self, chunk: bytes) -> list[str]:
        """Data payloads of the events completed by `chunk`, in order."""
        self.bytes_seen += len(chunk)
        self._buffer += self._decoder.decode(chunk)
        return self._drain()

    def close(self) -> list[str]:
        """Events left when the stream ends without a final blank line (lenient, as clients are)."""
        self._buffer += self._decoder.decode(b"", final=True)
        if not self._buffer.strip() and not self._data:
            return []
        self._buffer += "\n\n"
        return self._drain()

    def _drain(self) -> list[str]:
        buffer, start = self._buffer, 0
        events: list[str] = []
        for end in _LINE_END.finditer(buffer):
            if end.group() == "\r" and end.end() == len(buffer):
                break  # maybe the first half of a CRLF split across reads: wait for the next byte
            line = buffer[start : end.start()]
            start = end.end()
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
                continue
            if line.startswith(":"):
                continue
            name, sep, value = line.partition(":")
            if not sep:
                self.non_sse_lines += 1
                continue
            if name == "data":
                self._data.append(value[1:] if value.startswith(" ") else value)
        self._buffer = buffer[start:]
        return events
