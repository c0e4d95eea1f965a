"""The engine's named exceptions.

Callers (CLI, server, pages) catch these to show one clear line instead of a
traceback; anything else escaping the engine is a bug.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class: every error the engine raises on purpose."""


class ModelFileError(EngineError):
    """The model file is missing, unreadable, truncated or not a GGUF file."""


class UnsupportedModelError(EngineError):
    """The file is valid GGUF but holds an architecture or tensor type we cannot run."""


class PromptError(EngineError):
    """The prompt cannot be run: empty, or longer than the model's context."""


class WeightCacheError(EngineError):
    """A converted-weights cache entry is corrupt; callers rebuild it."""


class WeightsDirError(EngineError):
    """A weights directory (`--weights DIR`) is missing, corrupt, from another model file or in another format."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """What a one-line message quotes of an exception: its first line (a compiler's or torch's messages run to
    pages; the first says what), cut at `limit`, or its type's name when it has no text."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
