"""Where each message's text lands in a rendered chat prompt (for `Tokenizer.encode_chat`).

A chat template is rendered once more with a private placeholder in place of
each message's text (`\\ue000<index>\\ue001`, Unicode private-use characters).
Putting the texts back gives the prompt plus the character spans that came
from messages, wherever the template put them: it may drop, repeat or reorder
messages. The spans come out sorted and disjoint, so "does this token share a
character with a message" is a binary search, not a scan of every span.
"""

from __future__ import annotations

import bisect
import re
from typing import Any

_PLACEHOLDER = re.compile("\ue000(\\d{1,9})\ue001")
_PLACEHOLDER_CHARS = re.compile("[\ue000\ue001]")


def with_placeholders(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with each text content replaced by its placeholder (other fields kept)."""
    return [
        {**m, "content": f"\ue000{i}\ue001"} if isinstance(m, dict) and isinstance(m.get("content"), str) else m
        for i, m in enumerate(messages)
    ]


def substitute(marked: str, messages: list[dict[str, Any]], max_chars: int) -> tuple[str, list[int], list[int]] | None:
    """The placeholder rendering with each message's text put back, and the sorted spans of those texts.

    None when a placeholder was cut or altered, or the text would pass `max_chars` (the real
    rendering's length: a template repeating a long message many times must not build more
    than that). Empty messages leave no span: they hold no characters a token could take.
    """
    pieces: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    size = last = 0
    for mark in _PLACEHOLDER.finditer(marked):
        between = marked[last : mark.start()]
        index = int(mark.group(1))
        if _PLACEHOLDER_CHARS.search(between) or index >= len(messages):
            return None
        content = messages[index].get("content")
        if not isinstance(content, str):
            return None
        size += len(between)
        if content:
            starts.append(size)
            ends.append(size + len(content))
        size += len(content)
        if size > max_chars:
            return None
        pieces += (between, content)
        last = mark.end()
    tail = marked[last:]
    if _PLACEHOLDER_CHARS.search(tail):
        return None
    return "".join([*pieces, tail]), starts, ends


def overlaps(starts: list[int], ends: list[int], start: int, end: int) -> bool:
    """Whether characters [start, end) share any with a span; spans are sorted and disjoint."""
    i = bisect.bisect_left(starts, end) - 1  # the last span that starts before `end`
    return i >= 0 and ends[i] > start
