"""Prompt files: JSONL of prompts or chat messages, and ShareGPT conversations.

JSONL is Preflight's own format, so each line is checked strictly: a
`prompt` string or a `messages` list of {role, content}, an optional
`max_tokens`, nothing else. ShareGPT is someone else's format, found in many
variants, so only the parts we read are checked and extra keys are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from checks.load.prompts import Conversation, PromptRequest
from checks.load.tokenizer import TextTokenizer, count_tokens

DatasetFormat = Literal["jsonl", "sharegpt"]
# ShareGPT speakers: the first of HUMAN_ROLES is the prompt; a reply right after it sets max_tokens.
HUMAN_ROLES = frozenset({"human", "user"})
NON_REPLY_ROLES = HUMAN_ROLES | {"system"}


class DatasetError(ValueError):
    """A prompt file is missing, unreadable or not in a format we read; the message names file and place."""


@dataclass(frozen=True, slots=True)
class PromptDataset:
    """The requests read from one prompt file; `skipped` counts ShareGPT conversations with no human turn."""

    path: Path
    format: DatasetFormat
    requests: tuple[PromptRequest, ...]
    skipped: int = 0


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class _JsonlLine(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str | None = Field(default=None, min_length=1)
    messages: list[_Message] | None = Field(default=None, min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_of(self) -> _JsonlLine:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' (a string) or 'messages' (a list of {role, content})")
        return self


class _Turn(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    speaker: str = Field(alias="from")
    value: str


class _Conversation(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    conversations: list[_Turn]


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        parts.append(f"{where}: {item['msg']}" if where else item["msg"])
    return "; ".join(parts)


def _check_counts(default_max_tokens: int, limit: int | None, limit_name: str) -> None:
    if isinstance(default_max_tokens, bool) or not isinstance(default_max_tokens, int) or default_max_tokens < 1:
        raise ValueError(f"default_max_tokens is {default_max_tokens!r}: give at least 1 output token")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"{limit_name} is {limit!r}: give at least 1, or None for all")


def _read_text(path: str | Path) -> tuple[Path, str]:
    file = Path(path).expanduser()
    if not file.exists():
        raise DatasetError(f"prompt file not found: {file}: check the path")
    if not file.is_file():
        raise DatasetError(f"prompt path is not a file: {file}: give a .jsonl or ShareGPT .json file")
    try:
        return file, file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{file} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8") from exc


def _parse_jsonl(
    file: Path, text: str, default_max_tokens: int, tokenizer: TextTokenizer | None, limit: int | None
) -> PromptDataset:
    requests: list[PromptRequest] = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit inside a string
        if limit is not None and len(requests) >= limit:
            break
        if not line.strip():
            continue
        where = f"{file}:{number}"
        try:
            raw: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        except RecursionError:
            raise DatasetError(f"{where}: JSON nested too deeply to be a prompt") from None
        if not isinstance(raw, dict):
            raise DatasetError(f"{where}: expected a JSON object with 'prompt' or 'messages', got {type(raw).__name__}")
        try:
            item = _JsonlLine.model_validate(raw)
        except ValidationError as exc:
            raise DatasetError(f"{where}: {_describe(exc)}") from exc
        messages = None if item.messages is None else tuple(m.model_dump() for m in item.messages)
        requests.append(
            PromptRequest(
                prompt=item.prompt,
                messages=messages,
                max_tokens=item.max_tokens or default_max_tokens,
                input_tokens=None if tokenizer is None else count_tokens(tokenizer, item.prompt, messages),
                ignore_eos=False,
                source=f"jsonl:{file.name}#{number}",
            )
        )
    if not requests:
        raise DatasetError(f"{file} has no prompts: write one JSON object per line with 'prompt' or 'messages'")
    return PromptDataset(file, "jsonl", tuple(requests))


def load_jsonl(
    path: str | Path, default_max_tokens: int, tokenizer: TextTokenizer | None = None, limit: int | None = None
) -> PromptDataset:
    """Prompts from a JSONL file: one object per line, `prompt` or `messages`, optional `max_tokens`.

    Blank lines are skipped; any other bad line raises `DatasetError` naming
    the file, line number and what is wrong. `limit` keeps the first prompts only.
    """
    _check_counts(default_max_tokens, limit, "limit")
    file, text = _read_text(path)
    return _parse_jsonl(file, text, default_max_tokens, tokenizer, limit)


def _conversation_list(file: Path, text: str) -> list[Any]:
    """The JSON array a ShareGPT file holds; a clear DatasetError for anything else."""
    try:
        raw: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    except RecursionError:
        raise DatasetError(f"{file}: JSON nested too deeply to be a conversation list") from None
    if not isinstance(raw, list):
        raise DatasetError(f"{file}: ShareGPT is a JSON array of conversations, got {type(raw).__name__}")
    return raw


def _conversations(file: Path, raw: list[Any]) -> Iterator[tuple[int, _Conversation]]:
    """Each entry, validated only when reached (a caller that stops early never parses the rest)."""
    for index, entry in enumerate(raw):
        try:
            yield index, _Conversation.model_validate(entry)
        except ValidationError as exc:
            raise DatasetError(f"{file}: conversation {index}: {_describe(exc)}") from exc


def _first_exchange(turns: list[_Turn]) -> tuple[str | None, str | None]:
    """The first human turn's text, and the reply right after it (None where absent or empty)."""
    for position, turn in enumerate(turns):
        if turn.speaker in HUMAN_ROLES:
            return (turn.value if turn.value.strip() else None), _reply_after(turns, position)
    return None, None


def _reply_after(turns: list[_Turn], position: int) -> str | None:
    """The reply right after the human turn at `position`; None when the next turn is not one, or empty."""
    after = turns[position + 1] if position + 1 < len(turns) else None
    return after.value if after and after.speaker not in NON_REPLY_ROLES and after.value else None


def _parse_sharegpt(
    file: Path, text: str, default_max_tokens: int, tokenizer: TextTokenizer | None, limit: int | None
) -> PromptDataset:
    raw = _conversation_list(file, text)
    requests: list[PromptRequest] = []
    skipped = 0
    for index, conversation in _conversations(file, raw):
        if limit is not None and len(requests) >= limit:
            break
        prompt, reply = _first_exchange(conversation.conversations)
        if prompt is None:
            skipped += 1
            continue
        max_tokens = default_max_tokens
        if reply is not None and tokenizer is not None:
            max_tokens = max(1, len(tokenizer.encode(reply)))
        requests.append(
            PromptRequest(
                prompt=prompt,
                messages=None,
                max_tokens=max_tokens,
                input_tokens=None if tokenizer is None else count_tokens(tokenizer, prompt, None),
                ignore_eos=False,
                source=f"sharegpt:{file.name}#{index}",
            )
        )
    if not requests:
        raise DatasetError(f"{file}: none of its {len(raw)} conversations has a human turn to use as a prompt")
    return PromptDataset(file, "sharegpt", tuple(requests), skipped)


def load_sharegpt(
    path: str | Path,
    default_max_tokens: int,
    tokenizer: TextTokenizer | None = None,
    max_conversations: int | None = None,
) -> PromptDataset:
    """Prompts from a ShareGPT JSON file: a list of {"id", "conversations": [{"from", "value"}, ...]}.

    The first human turn is the prompt. With a tokenizer, the reply right after
    it sets `max_tokens` to its token length (as vLLM's sharegpt dataset does);
    otherwise `default_max_tokens`. Conversations without a human turn are
    skipped and counted in `skipped`. `max_conversations` stops after that many prompts.
    """
    _check_counts(default_max_tokens, max_conversations, "max_conversations")
    file, text = _read_text(path)
    return _parse_sharegpt(file, text, default_max_tokens, tokenizer, max_conversations)


def _human_turns(turns: list[_Turn], max_turns: int) -> list[tuple[str, str | None]]:
    """Each human turn's text and the reply after it, up to `max_turns` of them, stopping at an empty one."""
    out: list[tuple[str, str | None]] = []
    for position, turn in enumerate(turns):
        if turn.speaker not in HUMAN_ROLES:
            continue
        if not turn.value.strip() or len(out) >= max_turns:
            break
        out.append((turn.value, _reply_after(turns, position)))
    return out


def load_sharegpt_conversations(
    path: str | Path,
    max_turns: int,
    default_max_tokens: int,
    tokenizer: TextTokenizer | None = None,
    limit: int | None = None,
) -> list[Conversation]:
    """Multi-turn sessions from a ShareGPT file: every human turn (up to `max_turns`), in order.

    Each turn's max_tokens is the recorded reply's token length when a tokenizer
    is given (as for single prompts), else `default_max_tokens`; the history sent
    with the next turn is the server's real answer. `limit` stops after that many
    conversations; conversations without a human turn are skipped.
    """
    _check_counts(default_max_tokens, limit, "limit")
    if max_turns < 1:
        raise DatasetError(f"max_turns is {max_turns}: use at least 1 turn per conversation")
    file, text = _read_text(path)
    if text.lstrip()[:1] != "[":
        raise DatasetError(f"{file}: multi-turn sessions come from a ShareGPT file (a JSON array of conversations)")
    raw = _conversation_list(file, text)
    sessions: list[Conversation] = []
    for index, conversation in _conversations(file, raw):
        if limit is not None and len(sessions) >= limit:
            break
        turns = [
            (prompt, max(1, len(tokenizer.encode(reply))) if reply and tokenizer is not None else default_max_tokens)
            for prompt, reply in _human_turns(conversation.conversations, max_turns)
        ]
        if turns:
            sessions.append(Conversation(tuple(turns), ignore_eos=False, source=f"sharegpt:{file.name}#{index}"))
    if not sessions:
        raise DatasetError(f"{file}: none of its {len(raw)} conversations has a human turn to send")
    return sessions


def load_dataset(
    path: str | Path, default_max_tokens: int, tokenizer: TextTokenizer | None = None, limit: int | None = None
) -> PromptDataset:
    """A prompt file of either format, told apart by its content: a JSON array is ShareGPT, objects are JSONL."""
    _check_counts(default_max_tokens, limit, "limit")
    file, text = _read_text(path)
    opening = text.lstrip()[:1]
    if opening == "[":
        return _parse_sharegpt(file, text, default_max_tokens, tokenizer, limit)
    if opening == "{":
        return _parse_jsonl(file, text, default_max_tokens, tokenizer, limit)
    if not opening:
        raise DatasetError(f"{file} is empty: give a JSONL or ShareGPT prompt file")
    raise DatasetError(
        f"{file} is neither ShareGPT (a JSON array of conversations) nor JSONL (one JSON object per line): "
        f"it starts with {opening!r}"
    )
