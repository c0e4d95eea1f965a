"""`StopMatcher`: the first stop match and the streamed hold-back, checked against the plain definitions.

The definitions (earliest `str.find` over the whole text; the longest tail that is a
proper prefix of some stop) are written out here in their slow, obvious form, and the
matcher must agree with them on every piece of many random streams.
"""

from __future__ import annotations

import random

import pytest

from engine.stop_strings import StopMatcher


def first_match(text: str, stops: tuple[str, ...]) -> int:
    return min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)


def hold_back(text: str, stops: tuple[str, ...]) -> int:
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


def test_agrees_with_the_definitions_on_random_streams() -> None:
    rng = random.Random(16)
    for _ in range(2000):
        stops = tuple("".join(rng.choice("ab ") for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 4)))
        matcher, text = StopMatcher(stops), ""
        for _ in range(rng.randint(1, 12)):
            piece = "".join(rng.choice("ab c") for _ in range(rng.randint(0, 4)))
            text += piece
            hit = matcher.feed(piece)
            assert hit == first_match(text, stops), (stops, text)
            if hit >= 0:
                break
            assert matcher.hold_back == hold_back(text, stops), (stops, text)


@pytest.mark.parametrize(
    ("stops", "pieces", "hit"),
    [
        (("abcd", "bc"), ["abcd"], 0),  # both end in one piece: the one that starts first wins
        (("aab",), ["a", "a", "a", "b"], 1),  # a partial match that restarts inside itself
        (("</s>",), ["x<", "/", "s", ">y"], 1),  # split over pieces
        (("\n\n",), ["a\n", "", "\nb"], 1),  # an empty piece changes nothing
        (("zz",), ["abc"], -1),
    ],
)
def test_matches(stops: tuple[str, ...], pieces: list[str], hit: int) -> None:
    matcher = StopMatcher(stops)
    results = [matcher.feed(p) for p in pieces]
    assert results[-1] == hit and all(r == -1 for r in results[:-1])


def test_hold_back_is_the_longest_tail_that_may_still_become_a_stop() -> None:
    matcher = StopMatcher(("Human:", "###"))
    matcher.feed("So it goes. Hum")
    assert matcher.hold_back == 3
    matcher.feed("ble ##")
    assert matcher.hold_back == 2
    assert StopMatcher(()).hold_back == 0
