"""Options of `python -m engine serve`, validated with pydantic; no server imports.

Kept apart from `engine.serving.app` so that building the CLI parser (which takes
its --help text from these descriptions) does not import torch or FastAPI.
The bind check lives here too: a non-loopback host needs an API key unless
`--insecure` is given, and the error says why. So does the one rule for what
an API key is (`normalize_api_key`): the configured key and the presented
token both go through it, so a key read from a file with its newline still
matches what a client sends.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from engine.batch.speculative_method import SPECULATIVE_HELP, SpeculativeMethod, parse_speculative
from engine.formats import WeightFormat
from engine.model.chat_template import TemplateLimits
from engine.serving.validation import pydantic_message

MAX_API_KEY_CHARS = 512
"""Longer configured keys are refused and longer presented tokens fail unhashed (a cheap 401)."""
HOST_NAME = re.compile(r"^(\*|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)$")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def normalize_api_key(text: str) -> str:
    """The one rule for both sides of a key comparison: surrounding whitespace is not part of a key."""
    return text.strip()


def check_api_key(key: str) -> None:
    """A key every HTTP client can send: non-empty, visible ASCII, at most MAX_API_KEY_CHARS."""
    if not key:
        raise ValueError("the API key is empty: give a non-empty --api-key or PREFLIGHT_API_KEY")
    if len(key) > MAX_API_KEY_CHARS:
        raise ValueError(f"the API key is longer than {MAX_API_KEY_CHARS} characters")
    if not all("!" <= ch <= "~" for ch in key):
        raise ValueError("the API key may hold only visible ASCII characters (no spaces): clients send it in a header")


def check_exposure(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to listen beyond loopback without a key, saying why and what to do."""
    if api_key or insecure or is_loopback(host):
        return
    raise ValueError(
        f"refusing to listen on {host} without an API key: anyone who can reach this address could use the "
        "model. Set --api-key or PREFLIGHT_API_KEY, bind 127.0.0.1, or pass --insecure to accept the risk"
    )


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Per-request limits checked while a body is validated (passed as pydantic's validation context).

    Each bounds the work one request can cost: the chat encode is linear in the messages
    and runs off the event loop, but a 1 MiB body still holds ~30k empty messages; every
    generated token advances a matcher per stop string, and up to a stop's length of text
    is withheld from the stream while it might still become one.
    """

    max_messages: int = 1024
    max_stop_chars: int = 256


_LIMITS, _TEMPLATE = RequestLimits(), TemplateLimits()


class ServerOptions(BaseModel):
    """Everything `python -m engine serve` takes; the descriptions are its --help."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(None, description="GGUF file (default: the bundled SmolLM2)")
    quant: WeightFormat = Field("int4", description="weight format")
    weights: str | None = Field(
        None, description="directory of compressed weights from `python -m engine compress` (brings its own format)"
    )
    device: str = Field("auto", description="auto, cpu or cuda")
    use_weight_cache: bool = True
    host: str = Field("127.0.0.1", description="address to bind; beyond loopback an API key is required")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one)")
    api_key: SecretStr | None = Field(None, description="require 'Authorization: Bearer KEY' (or PREFLIGHT_API_KEY)")
    insecure: bool = Field(False, description="allow a non-loopback host without an API key")
    served_model_name: str | None = Field(None, description="model id in /v1/models (default: from the file name)")
    max_num_seqs: int = Field(16, ge=1, description="sequences decoded together")
    max_model_len: int | None = Field(None, ge=2, description="prompt + output limit (default: the model context)")
    max_queue: int = Field(64, ge=1, description="waiting requests before 503 (backpressure)")
    kv_cache_bytes: int | None = Field(
        None, ge=1, description="KV cache pool size (default: 256 MiB, or one max-model-len sequence if larger)"
    )
    rate_limit_rpm: int | None = Field(
        None, ge=1, description="requests per minute per client address (one shared key names no client)"
    )
    rate_limit_burst: int | None = Field(None, ge=1, description="bucket size for --rate-limit (default: RPM/6)")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="largest request body (413 above it)")
    max_connections: int = Field(
        256, ge=2, description="open connections and requests in progress; a request above it gets 503 at once"
    )
    auth_failure_limit: int = Field(
        10, ge=1, description="wrong API keys one client address may send per minute before 429 (with a key)"
    )
    allowed_hosts: tuple[str, ...] = Field(
        (),
        description="extra Host name accepted without an API key (repeatable; '*': any); "
        "localhost, IP addresses and the bound host always are",
    )
    max_messages: int = Field(_LIMITS.max_messages, ge=1, description="most chat messages in one request (400 above)")
    max_stop_chars: int = Field(
        _LIMITS.max_stop_chars, ge=1, description="longest stop string, in characters (400 above)"
    )
    max_template_chars: int = Field(
        _TEMPLATE.max_chars, ge=1024, description="longest chat-template output, in characters (400 above)"
    )
    template_timeout_s: float = Field(
        _TEMPLATE.timeout_s, gt=0, description="seconds the chat template may run for one request (400 after)"
    )
    speculative: str = Field("none", description=f"speculative decoding: {SPECULATIVE_HELP}")
    num_speculative_tokens: int = Field(
        4, ge=1, le=16, description="drafts per step (k) with --speculative ngram or draft:FORMAT"
    )
    cors_origins: tuple[str, ...] = Field((), description="allowed browser origin (repeatable); none: CORS off")
    log_prompts: bool = Field(False, description="log prompts and outputs (off: never logged)")
    step_log: str | None = Field(
        None,
        description="append one JSON line per engine step to this file: its time, tokens and sequences "
        "(the server's own cost of each pass, for profiling and planner calibration)",
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    compile: bool = Field(
        True,
        description="compiled decode step, the default where it works (CPU with a C++ compiler; elsewhere eager, "
        "the reason in the log and /health): ready before /health turns 200, built once per machine "
        "(about a minute), seconds after",
    )
    grace_period_s: float = Field(30.0, ge=0, description="seconds in-flight requests get to finish on SIGTERM")
    parent_pid: int | None = Field(
        None, ge=1, description="pid of the process starting the server: stop gracefully when it ends (bundled target)"
    )

    @field_validator("api_key")
    @classmethod
    def _normalize_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        key = normalize_api_key(value.get_secret_value())
        check_api_key(key)
        return SecretStr(key)

    @field_validator("speculative")
    @classmethod
    def _check_speculative(cls, value: str) -> str:
        return str(parse_speculative(value))

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        hosts = tuple(h.strip().lower() for h in value)
        for host in hosts:
            if not HOST_NAME.match(host):
                raise ValueError(f"{host[:100]!r} is not a host name: give a name such as 'box.lan', without port")
        return hosts

    @model_validator(mode="after")
    def _check(self) -> ServerOptions:
        check_exposure(self.host, self.key, self.insecure)
        return self

    @property
    def load_quant(self) -> str | None:
        """The format to ask the loader for: with --weights, none unless --quant was given (then it must match)."""
        return None if self.weights is not None and "quant" not in self.model_fields_set else self.quant

    @property
    def key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key is not None else None

    @property
    def speculative_method(self) -> SpeculativeMethod:
        return parse_speculative(self.speculative)

    @property
    def request_limits(self) -> RequestLimits:
        return RequestLimits(self.max_messages, self.max_stop_chars)

    @property
    def template_limits(self) -> TemplateLimits:
        return TemplateLimits(self.max_template_chars, self.template_timeout_s)

    @property
    def rate_limit_bucket(self) -> int | None:
        if self.rate_limit_rpm is None:
            return None
        return self.rate_limit_burst or max(1, self.rate_limit_rpm // 6)


def model_id(path: Path) -> str:
    """A stable id from the file name: 'SmolLM2-135M-Instruct.Q4_1.gguf' -> 'smollm2-135m-instruct'."""
    stem = re.sub(r"[.\-_](i?q\d\w*|f16|f32|bf16|fp16|fp32)$", "", path.stem, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-") or "model"


def option_help(name: str) -> str | None:
    """The field's description, with its default when the flag has one worth saying (one home for defaults)."""
    field = ServerOptions.model_fields[name]
    text, default = field.description, field.default
    if text is None or "default" in text or isinstance(default, bool) or not isinstance(default, int | float | str):
        return text
    return f"{text} (default: {default:g})" if isinstance(default, float) else f"{text} (default: {default})"


def describe_options_error(exc: ValidationError) -> str:
    """One line per problem, without pydantic's URLs or the input values (a key may be among them)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = pydantic_message(err)
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
