"""`TextStream` on the bundled tokenizer: what both decode paths show, and when.

The rule: text is given out in order, once; a character split over tokens waits until it
is whole; a tail that may still become a stop string waits until it cannot; a stop string
cuts the text where it began and is never shown. The random test checks the property that
matters to a client: nothing shown is ever taken back.
"""

from __future__ import annotations

import random

import pytest

from engine.model.gguf_file import GGUFModelFile
from engine.model.tokenizer import Tokenizer
from engine.text_stream import TextStream


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(GGUFModelFile())


def _stream(tokenizer: Tokenizer, stops: tuple[str, ...] = ()) -> TextStream:
    return TextStream(tokenizer.stream_decoder(), stops)


def test_text_comes_out_in_order_and_a_split_character_waits_until_it_is_whole(tokenizer: Tokenizer) -> None:
    text = "emoji 😀 and 中文, done"
    stream = _stream(tokenizer)
    shown = []
    for token in tokenizer.encode(text):
        assert not stream.push(token)
        shown.append(stream.take())
        assert "\ufffd" not in stream.text  # never half a character
    stream.flush()
    shown.append(stream.rest())
    assert "".join(shown) == stream.text == text
    assert stream.rest() == "" and stream.take() == ""  # each character is given out once


def test_a_dangling_partial_character_becomes_a_replacement_on_flush(tokenizer: Tokenizer) -> None:
    stream = _stream(tokenizer)
    for token in tokenizer.encode("😀")[:-1]:
        stream.push(token)
    assert stream.take() == "" and stream.text == ""
    stream.flush()
    assert stream.rest() == "\ufffd"


def test_a_tail_that_may_become_a_stop_is_held_back_until_it_cannot(tokenizer: Tokenizer) -> None:
    stream = _stream(tokenizer, ("Human:", "###"))
    for token in tokenizer.encode("So it goes. Hum"):
        stream.push(token)
    assert stream.take() == "So it goes. "  # "Hum" may be the start of "Human:"
    for token in tokenizer.encode("ble ##"):
        stream.push(token)
    assert stream.take() == "Humble "  # "##" may be the start of "###"
    assert stream.rest() == "##"  # at the end, the held-back tail is shown after all


def test_a_stop_string_cuts_the_text_where_it_began(tokenizer: Tokenizer) -> None:
    stream = _stream(tokenizer, ("goes",))
    results = [stream.push(token) for token in tokenizer.encode("So it goes. Hum")[:3]]
    assert results == [False, False, True] and stream.stopped
    assert stream.text == "So it "
    assert stream.rest() == "So it "
    with pytest.raises(RuntimeError):
        stream.push(tokenizer.encode(".")[0])


def test_what_is_shown_is_never_taken_back_on_random_streams(tokenizer: Tokenizer) -> None:
    rng = random.Random(17)
    for _ in range(300):
        text = "".join(rng.choice(["a", "b", " ", "ab", "\n", "é", "😀"]) for _ in range(rng.randint(1, 20)))
        stops = tuple("".join(rng.choice("ab \n") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(0, 3)))
        if any(a != b and a in b for a in stops for b in stops):
            continue  # then the stop that ends first need not be the one that starts first, which `find` gives
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        expected = text[: min(hits)] if hits else text
        stream, shown = _stream(tokenizer, stops), ""
        for token in tokenizer.encode(text):
            if stream.push(token):
                break
            shown += stream.take()
            assert expected.startswith(shown), (text, stops)
        else:
            stream.flush()
        shown += stream.rest()
        assert shown == stream.text == expected, (text, stops)
