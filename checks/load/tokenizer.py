"""The tokenizer a workload counts with: a small protocol, and the bundled model's tokenizer behind it.

Workloads need only text <-> ids, the vocabulary size and which ids are
special. Any tokenizer with those members fits `TextTokenizer` (an HF
tokenizer in a thin wrapper, say); `bundled_tokenizer()` gives the one the
bundled engine serves with, so its counts match the server's `usage`.

A tokenizer that can also render the model's chat template is a
`ChatTokenizer`; only then can a chat request's prompt length be counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from engine.model.tokenizer import Tokenizer


@runtime_checkable
class TextTokenizer(Protocol):
    """Text <-> token ids for one model, with no BOS or other special tokens added."""

    @property
    def name(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def special_token_ids(self) -> frozenset[int]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@runtime_checkable
class ChatTokenizer(TextTokenizer, Protocol):
    """A `TextTokenizer` that also renders the model's chat template (with the generation prompt)."""

    def apply_chat_template(self, messages: Sequence[dict[str, Any]]) -> str: ...


@dataclass(frozen=True, slots=True)
class EngineTokenizer:
    """The engine's GGUF tokenizer seen as a `ChatTokenizer`."""

    tokenizer: Tokenizer
    name: str

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def special_token_ids(self) -> frozenset[int]:
        return self.tokenizer.special_token_ids

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def apply_chat_template(self, messages: Sequence[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True)


@lru_cache(maxsize=1)
def bundled_tokenizer() -> EngineTokenizer:
    """The bundled SmolLM2 GGUF's tokenizer, built once per process (about half a second)."""
    # Imported here: the engine pulls in torch, which a workload that brings its own tokenizer never needs.
    from engine.model.gguf_file import GGUFModelFile
    from engine.model.tokenizer import Tokenizer

    model_file = GGUFModelFile()
    return EngineTokenizer(Tokenizer.from_gguf(model_file), name=model_file.path.stem)


def count_tokens(tokenizer: TextTokenizer, prompt: str | None, messages: Sequence[dict[str, Any]] | None) -> int | None:
    """Prompt tokens of a raw prompt, or of chat messages rendered with the template; None when unknowable."""
    if prompt is not None:
        return len(tokenizer.encode(prompt))
    if messages is not None and isinstance(tokenizer, ChatTokenizer):
        return len(tokenizer.encode(tokenizer.apply_chat_template(messages)))
    return None
