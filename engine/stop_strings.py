"""Stop strings over streamed text: where the first one matched, and how much tail to hold back.

A stream must not emit text that may still turn out to be the start of a stop
string, so each step withholds the longest tail of the text that is a prefix of
some stop (the hold-back). Testing every prefix of every stop against the
text's end costs O(len(stop)^2) characters copied per token, which a request
with long stop strings turns into event-loop time on every token. Here each
stop keeps a Knuth-Morris-Pratt state instead: the length of the longest suffix
of the text so far that is a prefix of the stop. That state *is* the stop's
hold-back, and it reaching the stop's length is a match. Each new character
moves it in amortised O(1), so a token costs O(new characters x stops) whatever
the stops' lengths, and no text is copied.
"""

from __future__ import annotations

from collections.abc import Sequence


def _failure(stop: str) -> list[int]:
    """KMP failure table: fail[i] is the longest proper prefix of stop[:i + 1] that is also its suffix."""
    fail = [0] * len(stop)
    k = 0
    for i in range(1, len(stop)):
        while k and stop[i] != stop[k]:
            k = fail[k - 1]
        if stop[i] == stop[k]:
            k += 1
        fail[i] = k
    return fail


class StopMatcher:
    """Feed it a stream's text piece by piece; it reports the first stop match and the hold-back.

    One matcher per generated sequence (it keeps state). Stops are non-empty
    (`SamplingParams` checks that). The first match reported is the one that
    starts earliest in the text, as `min(text.find(stop) for stop in stops)`.
    """

    __slots__ = ("_stops", "_fail", "_state", "_length")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._fail = [_failure(s) for s in self._stops]
        self._state = [0] * len(self._stops)
        self._length = 0  # characters fed so far

    def feed(self, piece: str) -> int:
        """Advance over `piece`; the start index (in the whole text) of the earliest stop it completed, or -1."""
        base, self._length = self._length, self._length + len(piece)
        if not piece:
            return -1
        hit = -1
        for k, stop in enumerate(self._stops):
            fail, q, size = self._fail[k], self._state[k], len(stop)
            for i, ch in enumerate(piece):
                while q and stop[q] != ch:
                    q = fail[q - 1]
                if stop[q] == ch:
                    q += 1
                if q == size:
                    start = base + i + 1 - size
                    hit = start if hit < 0 else min(hit, start)
                    q = fail[q - 1]
                    break  # this stop's first match is all a caller needs
            self._state[k] = q
        return hit

    @property
    def hold_back(self) -> int:
        """How many trailing characters could still become a stop string (not safe to emit yet)."""
        return max(self._state, default=0)
