"""`PromptRequest`: one request of a workload, whatever made it (synthetic, a prompt file, a scenario)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PromptRequest:
    """What the load generator sends: a raw prompt (completions API) or chat messages (chat API).

    `input_tokens` is the prompt length counted with the workload's tokenizer
    (chat messages rendered with the model's template), or None when no
    tokenizer could count it; the server's `usage` is the final word either way.
    `ignore_eos` asks the server to run to `max_tokens` (synthetic workloads);
    when the server cannot, the record's real output length says what happened.
    """

    prompt: str | None
    messages: tuple[dict[str, str], ...] | None
    max_tokens: int
    input_tokens: int | None
    ignore_eos: bool
    source: str  # where it came from: "synthetic#3", "jsonl:file.jsonl#12", "scenario:dialogue#4"

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a PromptRequest needs exactly one of prompt (a string) or messages (chat turns)")
        if self.prompt is not None and not self.prompt:
            raise ValueError(f"{self.source}: the prompt is empty: give at least one character of text")
        if self.messages is not None and not self.messages:
            raise ValueError(f"{self.source}: messages is empty: give at least one chat turn")
        if self.max_tokens < 1:
            raise ValueError(f"{self.source}: max_tokens is {self.max_tokens}: ask for at least 1 output token")
        if self.input_tokens is not None and self.input_tokens < 0:
            raise ValueError(f"{self.source}: input_tokens is {self.input_tokens}: a count cannot be negative")

    @property
    def is_chat(self) -> bool:
        """True for chat messages (send to /v1/chat/completions), False for a raw prompt."""
        return self.messages is not None


@dataclass(frozen=True, slots=True)
class Conversation:
    """A multi-turn session: user messages sent one after another, each with the whole history before it.

    The history holds the server's own answers, not recorded ones, so each turn
    sends exactly what a chat client would (and a prefix cache can reuse it).
    `turns` pairs each user message with its max_tokens.
    """

    turns: tuple[tuple[str, int], ...]
    ignore_eos: bool
    source: str  # "session#4", "sharegpt:file.json#12"

    def __post_init__(self) -> None:
        if not self.turns:
            raise ValueError(f"{self.source}: a conversation needs at least one user turn")
        for text, max_tokens in self.turns:
            if not text or max_tokens < 1:
                raise ValueError(f"{self.source}: every turn needs text and at least 1 output token")
