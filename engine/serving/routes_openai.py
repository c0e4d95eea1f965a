"""POST /v1/completions and /v1/chat/completions, streamed (SSE) or not.

A request is parsed and checked completely before anything is queued, so
every client mistake is a 4xx with a JSON body, never a half-sent stream:
400 for bad JSON or values and for prompt + max_tokens over the context,
404 for an unknown model, 503 when the waiting queue is full. Then the
engine thread runs it; a client that disconnects (streaming or not) aborts
its sequence at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from engine.batch.loop import Delta, EngineFailure, RequestStream
from engine.batch.scheduler import QueueFullError
from engine.errors import PromptError
from engine.model.chat_template import TemplateLimits
from engine.model.tokenizer import Tokenizer
from engine.serving.api_models import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    ChatCompletionRequest,
    CompletionRequest,
    _GenerationFields,
)
from engine.serving.errors import APIError, describe_validation_error, error_body
from engine.serving.state import ServerState, Serving

logger = logging.getLogger("preflight.server")
router = APIRouter()
Body = TypeVar("Body", bound=_GenerationFields)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


async def parse_body(request: Request, model: type[Body]) -> Body:
    """JSON object -> pydantic model, checked against the server's request limits; every failure is a 400."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise APIError(400, "send the body as JSON with 'Content-Type: application/json'", "invalid_content_type")
    raw = await request.body()
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise APIError(400, "the request body is not valid JSON", "invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", "invalid_json")
    try:
        return model.model_validate(data, context=request.app.state.server.options.request_limits)
    except ValidationError as exc:
        message, param = describe_validation_error(exc)
        raise APIError(400, message, "invalid_parameter", param) from None


def resolve_max_tokens(requested: int | None, default: int | None, n_prompt: int, max_model_len: int) -> int:
    """The output limit; prompt + limit over the context is a 400 that gives both counts."""
    max_tokens = requested if requested is not None else (default or max(1, max_model_len - n_prompt))
    if n_prompt + max_tokens > max_model_len:
        raise APIError(
            400,
            f"prompt of {n_prompt} tokens plus max_tokens {max_tokens} exceeds the model context of "
            f"{max_model_len} tokens: shorten the prompt or lower max_tokens",
            "context_length_exceeded",
            "max_tokens" if requested is not None else None,
        )
    return max_tokens


def _token_text(tok: Tokenizer, token_id: int) -> tuple[str, bytes]:
    raw = tok.token_to_bytes(token_id)
    return raw.decode("utf-8", errors="replace"), raw


class _Format(ABC):
    """How one API shapes its chunks and its final response."""

    object_name = ""
    chunk_object = ""
    id_prefix = ""

    def __init__(self, model: str, tokenizer: Tokenizer) -> None:
        self.id = self.id_prefix + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model
        self.tok = tokenizer

    def envelope(self, obj: str, choices: list[dict]) -> dict[str, object]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def opening_chunks(self) -> list[dict]:
        return []

    @abstractmethod
    def choice_chunk(self, delta: Delta) -> dict:
        """Implemented per API (completions / chat)."""

    @abstractmethod
    def choice_final(self, deltas: list[Delta], finish_reason: str) -> dict:
        """Implemented per API (completions / chat)."""

    @abstractmethod
    def logprobs(self, deltas: list[Delta]) -> dict | None:
        """Implemented per API (completions / chat)."""


class CompletionFormat(_Format):
    object_name = chunk_object = "text_completion"
    id_prefix = "cmpl-"

    def __init__(self, model: str, tokenizer: Tokenizer) -> None:
        super().__init__(model, tokenizer)
        self._offset = 0

    def choice_chunk(self, delta: Delta) -> dict:
        lps = self.logprobs([delta])
        return {"index": 0, "text": delta.text, "logprobs": lps, "finish_reason": delta.finish_reason}

    def choice_final(self, deltas: list[Delta], finish_reason: str) -> dict:
        text = "".join(d.text for d in deltas)
        return {"index": 0, "text": text, "logprobs": self.logprobs(deltas), "finish_reason": finish_reason}

    def logprobs(self, deltas: list[Delta]) -> dict | None:
        if not deltas or deltas[0].logprobs is None:
            return None
        tokens, lps, offsets = [], [], []
        for d in deltas:
            for token_id, lp in zip(d.token_ids, d.logprobs or (), strict=False):
                text, _ = _token_text(self.tok, token_id)
                tokens.append(text)
                lps.append(lp)
                offsets.append(self._offset)
                self._offset += len(text)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": None, "text_offset": offsets}


class ChatFormat(_Format):
    object_name = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def opening_chunks(self) -> list[dict]:
        return [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]

    def choice_chunk(self, delta: Delta) -> dict:
        body = {"content": delta.text} if delta.text else {}
        return {"index": 0, "delta": body, "logprobs": self.logprobs([delta]), "finish_reason": delta.finish_reason}

    def choice_final(self, deltas: list[Delta], finish_reason: str) -> dict:
        message = {"role": "assistant", "content": "".join(d.text for d in deltas)}
        return {"index": 0, "message": message, "logprobs": self.logprobs(deltas), "finish_reason": finish_reason}

    def logprobs(self, deltas: list[Delta]) -> dict | None:
        if not deltas or deltas[0].logprobs is None:
            return None
        content = []
        for d in deltas:
            for token_id, lp in zip(d.token_ids, d.logprobs or (), strict=False):
                text, raw = _token_text(self.tok, token_id)
                content.append({"token": text, "logprob": lp, "bytes": list(raw), "top_logprobs": []})
        return {"content": content, "refusal": None}


def _usage(stream: RequestStream) -> dict[str, object]:
    """OpenAI's usage; `prompt_tokens_details.cached_tokens` is what the prefix cache served (0 when nothing)."""
    usage: dict[str, object] = {
        "prompt_tokens": stream.prompt_tokens,
        "completion_tokens": stream.completion_tokens,
        "total_tokens": stream.prompt_tokens + stream.completion_tokens,
    }
    if stream.cached_prompt_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": stream.cached_prompt_tokens}
    return usage


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class EventStreamResponse(StreamingResponse):
    """SSE response that always runs `on_close`, even when the client left before the first byte."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class _Run:
    """One admitted request from its first delta to its metrics."""

    def __init__(self, state: ServerState, stream: RequestStream, fmt: _Format, prompt_text: str) -> None:
        self.state, self.stream, self.fmt = state, stream, fmt
        self._prompt_text = prompt_text
        self._ended = False

    def end(self) -> None:
        """Idempotent: abort if still running, then record metrics (and the texts with --log-prompts)."""
        if self._ended:
            return
        self._ended = True
        self.stream.close()
        reason = self.stream.finish_reason or "abort"
        self.state.metrics.on_request_end(self.stream, time.monotonic(), reason)
        if self.state.options.log_prompts:
            logger.info("%s finish=%s prompt=%r output=%r", self.fmt.id, reason, self._prompt_text, self.stream.text)

    async def sse(self, include_usage: bool) -> AsyncIterator[str]:
        fmt = self.fmt
        extra = {"usage": None} if include_usage else {}
        try:
            for choice in fmt.opening_chunks():
                yield _event(fmt.envelope(fmt.chunk_object, [choice]) | extra)
            async for delta in self.stream.deltas():
                yield _event(fmt.envelope(fmt.chunk_object, [fmt.choice_chunk(delta)]) | extra)
            if include_usage:
                yield _event(fmt.envelope(fmt.chunk_object, []) | {"usage": _usage(self.stream)})
        except EngineFailure as exc:  # a 200 stream is already open: the error goes in it
            yield _event(error_body(500, str(exc), "engine_failure"))
        finally:
            self.end()
        yield "data: [DONE]\n\n"

    async def collect(self, request: Request) -> Response:
        """Non-streaming: run to the end, unless the client disconnects first (then abort)."""
        collector = asyncio.ensure_future(_gather(self.stream))
        watcher = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            done, _ = await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if collector not in done:
                collector.cancel()
                return Response(status_code=499)  # nginx's "client closed request": nobody reads it
            try:
                deltas = collector.result()
            except EngineFailure as exc:
                raise APIError(500, str(exc), "engine_failure") from None
            finish = self.stream.finish_reason or "stop"
            fmt = self.fmt
            body = fmt.envelope(fmt.object_name, [fmt.choice_final(deltas, finish)]) | {"usage": _usage(self.stream)}
            return JSONResponse(body)
        finally:
            watcher.cancel()
            self.end()


async def _gather(stream: RequestStream) -> list[Delta]:
    return [d async for d in stream.deltas()]


async def _wait_for_disconnect(request: Request) -> None:
    """The body is already read, so the next ASGI message is the client going away."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _serve(
    request: Request, body: _GenerationFields, prompt: str | list[dict] | list[int], fmt_cls: type[_Format]
) -> Response:
    arrival_s = time.monotonic()
    state: ServerState = request.app.state.server
    serving: Serving = state.require()
    state.check_model(body.model)
    # Rendering and tokenizing take milliseconds to seconds: a worker thread, so /health and
    # every stream keep their event loop meanwhile (the tokenizer is thread-safe).
    prompt_ids = await asyncio.to_thread(_encode, serving, prompt, state.options.template_limits)
    default = COMPLETIONS_DEFAULT_MAX_TOKENS if isinstance(body, CompletionRequest) else None
    max_tokens = resolve_max_tokens(body.requested_max_tokens(), default, len(prompt_ids), serving.max_model_len)
    try:
        params = body.sampling_params(max_tokens)
    except ValueError as exc:
        raise APIError(400, str(exc), "invalid_parameter") from None
    tokenizer = serving.engine.loaded.tokenizer
    try:
        stream = await RequestStream.open(serving.loop, tokenizer, prompt_ids, params, arrival_s)
    except QueueFullError:
        raise APIError(
            503,
            "the server is at capacity (waiting queue full): retry later",
            "queue_full",
            headers={"Retry-After": "1"},
        ) from None
    except PromptError as exc:
        raise APIError(400, str(exc), "invalid_prompt") from None
    except EngineFailure as exc:
        raise APIError(503, str(exc), "engine_stopped") from None
    state.metrics.on_admitted(stream)
    run = _Run(state, stream, fmt_cls(state.model_name, tokenizer), str(prompt) if state.options.log_prompts else "")
    if body.stream:
        return EventStreamResponse(run.sse(body.include_usage), on_close=run.end)
    return await run.collect(request)


def _encode(serving: Serving, prompt: str | list[dict] | list[int], limits: TemplateLimits) -> list[int]:
    """Token ids for text, chat messages (through the chat template) or ids given directly."""
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        vocab = serving.engine.loaded.tokenizer.vocab_size
        if not prompt or any(not 0 <= t < vocab for t in prompt):  # type: ignore[operator]
            raise APIError(400, f"prompt token ids must be in 0..{vocab - 1}", "invalid_prompt", "prompt")
        return list(prompt)  # type: ignore[arg-type]
    try:
        return serving.engine.encode_prompt(prompt, isinstance(prompt, list), limits)  # type: ignore[arg-type]
    except PromptError as exc:
        raise APIError(400, str(exc), "invalid_prompt") from None


@router.post("/v1/completions")
async def create_completion(request: Request) -> Response:
    body = await parse_body(request, CompletionRequest)
    try:
        prompt = body.single_prompt()
    except ValueError as exc:
        raise APIError(400, str(exc), "invalid_prompt", "prompt") from None
    return await _serve(request, body, prompt, CompletionFormat)


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    messages = [m.as_template_message() for m in body.messages]
    return await _serve(request, body, messages, ChatFormat)
