"""The engine thread and per-request streams: how asyncio handlers share one BatchEngine.

One thread owns the `BatchEngine` (the scheduler is not thread-safe). It loops:
drain the inbox (add / abort / finish commands sent by handlers), call
`step()` while anything is unfinished, hand each `TokenOutput` to its
request's `asyncio.Queue` with `loop.call_soon_threadsafe`, and sleep on a
`threading.Event` when idle (no busy spin).

Each handler holds a `RequestStream`: it turns its own tokens into text with a
`engine.text_stream.TextStream` (detokenize, hold back text that may still become
a stop string, cut at one), and tells the engine to `finish` on a match or `abort`
when the client goes away, so the KV blocks are freed at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from engine.batch.batch_engine import BatchEngine, StepResult, TokenOutput
from engine.errors import EngineError
from engine.model.tokenizer import Tokenizer
from engine.sampling import SamplingParams
from engine.text_stream import TextStream

logger = logging.getLogger("preflight.server")


class EngineFailure(EngineError):
    """The engine thread failed or stopped while a request was in flight (a 500, not a client error)."""


@dataclass(frozen=True, slots=True)
class _Sink:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


@dataclass(slots=True)
class _Add:
    prompt_ids: list[int]
    params: SamplingParams
    sink: _Sink
    reply: concurrent.futures.Future


@dataclass(frozen=True, slots=True)
class _Abort:
    seq_id: int


@dataclass(frozen=True, slots=True)
class _Finish:
    seq_id: int


@dataclass(frozen=True, slots=True)
class _Stop:
    pass


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """What the engine thread last published for /metrics (copied, so readers need no lock)."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_hit_rate: float | None = None
    spec_acceptance_rate: float | None = None
    num_preemptions: int = 0


StepObserver = Callable[[StepResult, EngineSnapshot], None]


class BatchLoop:
    """The server's loop thread: runs `BatchEngine.step()`; handlers talk to it only through commands."""

    def __init__(self, llm: BatchEngine, *observers: StepObserver) -> None:
        self.llm = llm
        self._observers = observers  # called on the engine thread after every step (and when idle)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._sinks: dict[int, _Sink] = {}
        self._thread = threading.Thread(target=self._run, name="preflight-engine", daemon=True)
        self.snapshot = EngineSnapshot()
        self.error: BaseException | None = None
        self._closed = False  # set (under the lock) when the thread stops taking commands
        self._lock = threading.Lock()

    # ---- the asyncio side -----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Abort whatever is left, end the thread; True when it ended within the timeout."""
        self._send(_Stop())
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def add(self, prompt_ids: list[int], params: SamplingParams, sink: _Sink) -> concurrent.futures.Future:
        """Queue a request; the future resolves to its seq_id or raises QueueFullError / PromptError."""
        reply: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closed or not self.alive:
                reply.set_exception(EngineFailure("the engine is not running"))
                return reply
            self._send(_Add(list(prompt_ids), params, sink, reply))
        return reply

    def abort(self, seq_id: int) -> None:
        self._send(_Abort(seq_id))

    def finish(self, seq_id: int) -> None:
        self._send(_Finish(seq_id))

    def _send(self, command: object) -> None:
        self._inbox.put(command)
        self._wake.set()

    # ---- the engine thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._drain():
                if self.llm.has_unfinished:
                    self._step()
                else:
                    self._publish(StepResult())
                    self._wake.wait()
                    self._wake.clear()
            self._fail_all("the server is shutting down")
        except BaseException as exc:  # the thread must never die silently: fail every waiter
            self.error = exc
            logger.error("engine thread failed: %s", type(exc).__name__, exc_info=exc)
            self._fail_all("the engine stopped after an internal error")
        finally:
            with self._lock:
                self._closed = True  # no add can be queued after this, so none is left unanswered
            self._fail_pending()

    def _drain(self) -> bool:
        """Apply every queued command; False once a stop was requested."""
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return True
            if isinstance(command, _Add):
                self._add(command)
            elif isinstance(command, _Abort | _Finish):
                self._sinks.pop(command.seq_id, None)
                end = self.llm.abort if isinstance(command, _Abort) else self.llm.finish
                try:
                    end(command.seq_id)
                except Exception as exc:  # a bug here must not stop every other request
                    logger.error("ending sequence %d failed: %s", command.seq_id, type(exc).__name__, exc_info=exc)
            elif isinstance(command, _Stop):
                return False

    def _add(self, command: _Add) -> None:
        if not command.reply.set_running_or_notify_cancel():
            return  # the handler gave up before we got here
        try:
            seq_id = self.llm.add_request(command.prompt_ids, command.params)
        except Exception as exc:  # QueueFullError, PromptError; anything else becomes the handler's 500
            command.reply.set_exception(exc)
            return
        self._sinks[seq_id] = command.sink
        command.reply.set_result(seq_id)

    def _step(self) -> None:
        try:
            result = self.llm.step()
        except Exception as exc:  # a bug in one step fails the requests in it, not the server
            logger.error("engine step failed: %s", type(exc).__name__, exc_info=exc)
            self._fail_all("the engine failed while running this request")
            return
        # Count first, then deliver: once a client has its last token, /metrics already includes it
        # (a scrape right after a run ends must see every token the clients received).
        self._publish(result)
        self._deliver(result.outputs)

    def _deliver(self, outputs: list[TokenOutput]) -> None:
        """One thread-safe callback per event loop per step, not one per token."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, TokenOutput]]] = defaultdict(list)
        for out in outputs:
            sink = self._sinks.get(out.seq_id)
            if sink is None:
                continue
            if out.finished:
                del self._sinks[out.seq_id]
            batches[sink.loop].append((sink.queue, out))
        for loop, items in batches.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that event loop has closed: nobody is listening any more
                for _q, out in items:
                    self._sinks.pop(out.seq_id, None)
                    self.llm.abort(out.seq_id)

    def _fail_all(self, message: str) -> None:
        for seq_id, sink in list(self._sinks.items()):
            self.llm.abort(seq_id)
            with contextlib.suppress(RuntimeError):  # its loop is closed: there is no one left to tell
                sink.loop.call_soon_threadsafe(sink.queue.put_nowait, EngineFailure(message))
        self._sinks.clear()
        self._publish(StepResult())

    def _fail_pending(self) -> None:
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Add) and command.reply.set_running_or_notify_cancel():
                command.reply.set_exception(EngineFailure("the engine is not running"))

    def _publish(self, result: StepResult) -> None:
        s = self.llm.kv_stats()
        self.snapshot = EngineSnapshot(
            num_running=s.num_running,
            num_waiting=s.num_waiting,
            kv_cache_usage=s.kv_cache_usage,
            prefix_cache_hit_rate=s.prefix_cache_hit_rate,
            spec_acceptance_rate=s.spec_acceptance_rate,
            num_preemptions=s.num_preemptions,
        )
        for observe in self._observers:
            observe(result, self.snapshot)


def _put_all(items: list[tuple[asyncio.Queue, object]]) -> None:
    for q, item in items:
        q.put_nowait(item)


@dataclass(slots=True)
class Delta:
    """Text that became final since the last delta, with the tokens (and logprobs) behind it."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str | None = None


@dataclass(slots=True)
class RequestStream:
    """One admitted request: iterate for deltas; `close()` aborts it if it is still running."""

    loop: BatchLoop
    seq_id: int
    prompt_tokens: int
    params: SamplingParams
    tokenizer: Tokenizer
    queue: asyncio.Queue
    arrival_s: float
    completion_tokens: int = 0
    cached_prompt_tokens: int | None = None  # prompt tokens the prefix cache served, once the first token is out
    finish_reason: str | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    done: bool = False
    _text: TextStream = field(init=False)
    _pending_ids: list[int] = field(default_factory=list)
    _pending_lps: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._text = TextStream(self.tokenizer.stream_decoder(), self.params.stop)

    @property
    def text(self) -> str:
        """The text so far (cut where a stop string began), streamed or still held back."""
        return self._text.text

    @classmethod
    async def open(
        cls, loop: BatchLoop, tokenizer: Tokenizer, prompt_ids: list[int], params: SamplingParams, arrival_s: float
    ) -> RequestStream:
        """Admit a request; raises QueueFullError / PromptError / EngineFailure before anything streams."""
        q: asyncio.Queue = asyncio.Queue()
        reply = loop.add(prompt_ids, params, _Sink(asyncio.get_running_loop(), q))
        try:
            seq_id = await asyncio.wrap_future(reply)
        except asyncio.CancelledError:
            # The engine may still admit it: abort it as soon as the id is known.
            reply.add_done_callback(lambda f: _abort_if_admitted(loop, f))
            raise
        return cls(loop, seq_id, len(prompt_ids), params, tokenizer, q, arrival_s)

    def close(self) -> None:
        """Idempotent: abort in the engine unless the request already ended."""
        if not self.done:
            self.done = True
            self.loop.abort(self.seq_id)

    async def deltas(self) -> AsyncIterator[Delta]:
        text = self._text
        try:
            while not self.done:
                item = await self.queue.get()
                if isinstance(item, BaseException):
                    self.done = True
                    raise item
                now = time.monotonic()
                if item.cached_prompt_tokens is not None:
                    self.cached_prompt_tokens = item.cached_prompt_tokens
                lps = item.logprobs or []
                for i, token in enumerate(item.new_token_ids):
                    self._take(token, lps[i] if i < len(lps) else None, now)
                    if text.push(token):
                        self.loop.finish(self.seq_id)
                        self.done = True
                        yield self._flush(text.rest(), "stop")
                        return
                if item.finished:
                    text.flush()
                    self.done = True
                    yield self._flush(text.rest(), item.finish_reason or "stop")
                    return
                if final := text.take():
                    yield self._flush(final, None)
        finally:
            self.close()

    def _take(self, token: int, logprob: float | None, now: float) -> None:
        if self.first_token_s is None:
            self.first_token_s = now
        self.last_token_s = now
        self.completion_tokens += 1
        self._pending_ids.append(token)
        if logprob is not None:
            self._pending_lps.append(logprob)

    def _flush(self, text: str, finish_reason: str | None) -> Delta:
        """A delta of `text` with the tokens (and logprobs) taken since the last one."""
        delta = Delta(
            text=text,
            token_ids=self._pending_ids,
            logprobs=self._pending_lps if self.params.logprobs else None,
            finish_reason=finish_reason,
        )
        self._pending_ids, self._pending_lps = [], []
        if finish_reason is not None:
            self.finish_reason = finish_reason
        return delta


def _abort_if_admitted(loop: BatchLoop, reply: concurrent.futures.Future) -> None:
    if not reply.cancelled() and reply.exception() is None:
        loop.abort(reply.result())
