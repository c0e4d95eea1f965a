"""Rendering a model's own chat template (the Jinja2 text stored in the GGUF).

The template comes from a downloaded file, so it is untrusted code: it runs in
Jinja2's immutable sandbox, which blocks attribute tricks and mutation of the
objects we pass in. The environment mirrors what HF transformers offers
templates (`trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`,
a `tojson` that keeps non-ASCII text), because templates are written against it.

Every failure, from malformed messages to a template that raises, becomes a
`PromptError` with one clear line, so servers can answer 400 instead of 500.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import PromptError


def _raise_exception(message: str) -> NoReturn:
    """Templates call this to reject a conversation (e.g. roles out of order)."""
    raise PromptError(f"the chat template rejected the messages: {message}")


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    """Jinja's built-in `tojson` HTML-escapes `<>&'`; prompts need the plain JSON."""
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    """Llama-3.x templates stamp today's date with this."""
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def compile_chat_template(template: str) -> jinja2.Template:
    """Parse a template once; a syntax error is a `PromptError` naming the line."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise PromptError(f"the model's chat template does not parse (line {exc.lineno}): {exc.message}") from exc


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check the OpenAI-style shape: a non-empty list of {role: str, content: str}.

    Extra keys (e.g. `name`) pass through to the template; `content` must be
    text, because multimodal parts cannot be tokenized by this engine.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise PromptError(f"messages must be a list of {{role, content}} objects, got {type(messages).__name__}")
    if not messages:
        raise PromptError("messages is empty: give at least one {role, content} message")
    checked: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise PromptError(f"messages[{i}] must be an object with role and content, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise PromptError(f"messages[{i}].role must be a non-empty string, got {role!r}")
        if not isinstance(content, str):
            raise PromptError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        checked.append(dict(message))
    return checked


def render_chat_template(
    template: str | None,
    messages: Any,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """The prompt text for a conversation, exactly as the model was trained to see it.

    The result still contains special-token strings such as `<|im_start|>`;
    `Tokenizer.encode` parses those back into single special ids.
    """
    if not template:
        raise PromptError("this model file has no chat template (tokenizer.chat_template): send a plain prompt")
    checked = validate_messages(messages)
    compiled = compile_chat_template(template)
    try:
        return compiled.render(
            messages=checked,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except PromptError:
        raise
    except jinja2.TemplateError as exc:  # includes SecurityError and UndefinedError
        raise PromptError(f"the model's chat template failed on these messages: {exc}") from exc
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise PromptError(f"the model's chat template failed on these messages: {type(exc).__name__}: {exc}") from exc
