"""Rendering a model's own chat template (the Jinja2 text stored in the GGUF).

The template comes from a downloaded file, so it is untrusted code: it runs in
Jinja2's immutable sandbox, which blocks attribute tricks and mutation of the
objects we pass in. The environment mirrors what HF transformers offers
templates (`trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`,
a `tojson` that keeps non-ASCII text), because templates are written against it.

Every failure, from malformed messages to a template that raises, recurses
without end or overflows, becomes a `PromptError` with one clear line, so
servers can answer 400 instead of 500. Rendering is bounded (`TemplateLimits`):
its output size, its time (checked on every line of template code, so a loop
without output cannot spin for ever), and the size of `*` and `**` results (one
such operation could allocate gigabytes or compute for hours between two lines).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from types import FrameType
from typing import Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import PromptError


@dataclass(frozen=True, slots=True)
class TemplateLimits:
    """Bounds on one rendering: the template is code from a downloaded model file, not ours."""

    max_chars: int = 4 * 1024 * 1024  # rendered prompt text; far above any context's worth of tokens
    timeout_s: float = 5.0  # a normal conversation renders in milliseconds

    def check_size(self, n_chars: int) -> None:
        """The one size rule, for the rendering and for the prompt assembled from it."""
        if n_chars > self.max_chars:
            raise PromptError(
                f"the chat template's output exceeds {self.max_chars} characters (--max-template-chars): "
                "send fewer or shorter messages"
            )


# Largest int a template may build with `*` or `**` (bits; 10**1000 is about 3,300), and the most
# items one `*` may repeat a string or list into.
MAX_INT_BITS = 64 * 1024
MAX_REPEAT_ITEMS = 4 * 1024 * 1024
_TEMPLATE_FILE = "<template>"  # the file name Jinja gives code compiled by `from_string`


class _RenderTimeout(Exception):
    """Raised inside the template's own frames once its deadline has passed."""


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, where `*` and `**` refuse results too big to build in one step."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "**" and type(left) is int and type(right) is int and abs(left) > 1:
        bits = left.bit_length() * right
        if bits > MAX_INT_BITS:
            raise PromptError(f"the chat template computes a number of about {bits} bits: refused")
    elif operator == "*":
        if type(left) is int and type(right) is int and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise PromptError("the chat template multiplies numbers too large to compute: refused")
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and type(times) is int and len(seq) * times > MAX_REPEAT_ITEMS:
                raise PromptError(f"the chat template repeats a sequence {times} times: refused")


@contextmanager
def _deadline(timeout_s: float) -> Iterator[None]:
    """Trace this thread's template frames line by line; a line after the deadline raises.

    Only frames of the compiled template are traced (Jinja names them `<template>`),
    so Jinja's own code and ours run untraced; the previous trace function (a
    debugger, coverage) is put back afterwards.
    """
    deadline = time.monotonic() + timeout_s

    def on_line(_frame: FrameType, _event: str, _arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise _RenderTimeout
        return on_line

    def on_call(frame: FrameType, _event: str, _arg: Any) -> Any:
        return on_line if frame.f_code.co_filename == _TEMPLATE_FILE else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(previous)


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
    env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
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
    limits: TemplateLimits | None = None,
) -> str:
    """The prompt text for a conversation, exactly as the model was trained to see it.

    The result still contains special-token strings such as `<|im_start|>`;
    `Tokenizer.encode` parses those back into single special ids.
    """
    if not template:
        raise PromptError("this model file has no chat template (tokenizer.chat_template): send a plain prompt")
    limits = limits or TemplateLimits()
    checked = validate_messages(messages)
    compiled = compile_chat_template(template)
    variables = {
        "messages": checked,
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    try:
        return _render_bounded(compiled, variables, limits)
    except PromptError:
        raise
    except _RenderTimeout:
        raise PromptError(
            f"the model's chat template ran longer than {limits.timeout_s:g} s (--template-timeout) on these messages"
        ) from None
    except RecursionError:
        raise PromptError("the model's chat template recursed too deeply on these messages") from None
    except MemoryError:
        raise PromptError("the model's chat template ran out of memory on these messages") from None
    except jinja2.TemplateError as exc:  # includes SecurityError and UndefinedError
        raise PromptError(f"the model's chat template failed on these messages: {exc}") from exc
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError) as exc:
        raise PromptError(f"the model's chat template failed on these messages: {type(exc).__name__}: {exc}") from exc


def _render_bounded(compiled: jinja2.Template, variables: dict[str, Any], limits: TemplateLimits) -> str:
    """Render chunk by chunk, stopping at the size limit or the deadline rather than after them."""
    chunks: list[str] = []
    size = 0
    with _deadline(limits.timeout_s):
        stream = compiled.generate(**variables)
        try:
            for chunk in stream:
                size += len(chunk)
                limits.check_size(size)
                chunks.append(chunk)
        finally:
            stream.close()
    return "".join(chunks)
