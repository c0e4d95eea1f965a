"""Generated token ids in, the text a caller may show out: detokenize, hold back, cut at a stop string.

Both decode paths stream text by the same rule: the single-stream `Generation`
(engine/run/runtime.py) and the server's `RequestStream` (engine/batch/loop.py).
A token may end in the middle of a UTF-8 character (the tokenizer's `StreamDecoder`
keeps those bytes), and text that may still turn out to be the start of a stop string
must not be shown yet (`StopMatcher.hold_back`). When a stop string completes, the text
ends where it began and the stop itself is never shown. Writing the rule once here keeps
the two paths from drifting apart in what they stream and when.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from engine.stop_strings import StopMatcher


class TokenDecoder(Protocol):
    """What a `TextStream` needs of a detokenizer (the tokenizer's `StreamDecoder` is one)."""

    def push(self, token_id: int) -> str: ...

    def flush(self) -> str: ...


class TextStream:
    """One generated sequence's text: `push` each token, then `take` what became final.

    `take` gives out text that can no longer change; `rest` gives out everything not
    yet given, for the end of the sequence (after a stop string matched, or once the
    sequence ran out). Each character is given out once, in order.
    """

    __slots__ = ("_decoder", "_stops", "_text", "_taken", "_stopped")

    def __init__(self, decoder: TokenDecoder, stops: Sequence[str] = ()) -> None:
        self._decoder = decoder
        self._stops = StopMatcher(stops)
        self._text = ""
        self._taken = 0  # characters given out so far
        self._stopped = False

    @property
    def text(self) -> str:
        """All the text so far (cut where a stop string began, once one matched)."""
        return self._text

    @property
    def stopped(self) -> bool:
        """True once a stop string matched; nothing more may be pushed."""
        return self._stopped

    def push(self, token_id: int) -> bool:
        """Decode one more token; True when it completed a stop string (the text now ends where that began)."""
        if self._stopped:
            raise RuntimeError("a stop string already ended this text")
        piece = self._decoder.push(token_id)
        self._text += piece
        hit = self._stops.feed(piece)
        if hit >= 0:
            self._text = self._text[:hit]
            self._stopped = True
        return self._stopped

    def flush(self) -> None:
        """The sequence ran out: add the bytes the decoder still held (a dangling partial character is U+FFFD)."""
        self._text += self._decoder.flush()

    def take(self) -> str:
        """Text that became final since the last call: all but the tail that may still become a stop string."""
        safe = len(self._text) - self._stops.hold_back
        if safe <= self._taken:
            return ""
        out = self._text[self._taken : safe]
        self._taken = safe
        return out

    def rest(self) -> str:
        """Everything not given out yet, the held-back tail included: for when the sequence has ended."""
        out = self._text[self._taken :]
        self._taken = len(self._text)
        return out
