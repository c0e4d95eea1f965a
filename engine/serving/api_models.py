"""Request bodies of the OpenAI-compatible API, validated with pydantic (`extra="forbid"`).

An unknown field is a 400, never silently dropped. Fields the official
`openai` SDK may send but this engine cannot honour are declared and
refused only when they ask for something we don't do: `n` other than 1,
non-zero presence/frequency penalties, `logit_bias`, top-k alternatives
in `logprobs` / `top_logprobs`. `user` and `stream_options` are accepted.
Extensions, named as vLLM names them: `top_k`, `min_p`,
`repetition_penalty`, `ignore_eos` (for benchmarks).

Defaults follow OpenAI: temperature 1.0, top_p 1.0, completions
`max_tokens` 16; chat without a limit may use the rest of the context.

The server's per-request limits (`RequestLimits`: messages per request,
characters per stop string) come in as the validation context, so
`model_validate(data, context=limits)` checks them beside every other rule;
without a context the defaults apply.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from engine.sampling import SamplingParams
from engine.serving.options import RequestLimits

MAX_STOP_STRINGS = 16
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _limits(info: ValidationInfo) -> RequestLimits:
    return info.context if isinstance(info.context, RequestLimits) else RequestLimits()


class StreamOptions(_Body):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # OpenAI's field; accepted, nothing to obfuscate here


class _GenerationFields(_Body, ABC):
    """What both APIs share: model, limits, sampling and streaming."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(default=None, max_length=256)
    # vLLM-style extensions
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, lt=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    ignore_eos: bool | None = False

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int | None) -> int | None:
        if v not in (None, 1):
            raise ValueError("only n=1 is supported: send separate requests for more choices")
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_openai_penalty(cls, v: float | None) -> float | None:
        if v not in (None, 0, 0.0):
            raise ValueError("only 0 is supported; use repetition_penalty (e.g. 1.1) instead")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v:
            raise ValueError("logit_bias is not supported")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None, info: ValidationInfo) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        longest = _limits(info).max_stop_chars
        if any(len(s) > longest for s in stops):
            raise ValueError(f"a stop string may be at most {longest} characters long (the server's --max-stop-chars)")
        return v

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    @abstractmethod
    def wants_logprobs(self) -> bool:
        """Whether chosen-token logprobs were asked for (each API spells it differently)."""

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def sampling_params(self, max_tokens: int) -> SamplingParams:
        """The engine's params; SamplingParams raises ValueError for what pydantic let through."""
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_k=max(0, self.top_k or 0),
            top_p=1.0 if self.top_p is None else self.top_p,
            min_p=self.min_p or 0.0,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            seed=self.seed,
            stop=self.stop_strings,
            logprobs=self.wants_logprobs,
            ignore_eos=bool(self.ignore_eos),
        )


class CompletionRequest(_GenerationFields):
    """POST /v1/completions. `prompt` is text or token ids; one prompt per request."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool | None = False
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("logprobs")
    @classmethod
    def _chosen_only(cls, v: int | None) -> int | None:
        if v not in (None, 0):
            raise ValueError(
                "top alternatives are not returned by this server: use logprobs=0 for the chosen tokens' logprobs"
            )
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("echo is not supported")
        return v

    @field_validator("best_of")
    @classmethod
    def _best_of_one(cls, v: int | None) -> int | None:
        if v not in (None, 1):
            raise ValueError("only best_of=1 is supported")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("suffix (insertion) is not supported")
        return v

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs is not None

    def single_prompt(self) -> str | list[int]:
        """The one prompt, as text or token ids; a batch of several is refused."""
        p = self.prompt
        if isinstance(p, str):
            return p
        if not p:
            raise ValueError("prompt is empty")
        if all(isinstance(x, int) for x in p):
            return list(p)  # type: ignore[arg-type]
        if len(p) != 1:
            raise ValueError("one prompt per request: send several requests instead of a list of prompts")
        return p[0]  # type: ignore[return-value]


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_template_message(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": text}


class ChatCompletionRequest(_GenerationFields):
    """POST /v1/chat/completions. Messages are rendered with the model's own chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = None

    @field_validator("messages", mode="before")
    @classmethod
    def _few_enough(cls, v: object, info: ValidationInfo) -> object:
        """Counted before each message is parsed, so an oversized list costs nothing more."""
        most = _limits(info).max_messages
        if isinstance(v, list) and len(v) > most:
            raise ValueError(f"at most {most} messages are allowed per request (the server's --max-messages)")
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _chosen_only(cls, v: int | None) -> int | None:
        if v not in (None, 0):
            raise ValueError("top alternatives are not returned by this server: use logprobs=true with top_logprobs 0")
        return v

    @property
    def wants_logprobs(self) -> bool:
        return bool(self.logprobs)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
