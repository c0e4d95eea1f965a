"""One `RequestRecord` per request the load generator sends: raw timestamps, token counts, outcome.

Records come first (STYLE.md §6): every figure in a summary is recomputed from
them, and a report keeps them. All times are seconds on the run clock (a
`perf_counter` offset from the start of the run), so they subtract directly.

The latency properties follow DESIGN.md "Metric definitions": latency starts at
`send_s` (the request is on the wire), not at `ready_s` (eligible to send); the
gap between the two is queue time, and lag behind a rate schedule is
`ready_s - scheduled_s`. A value that cannot be measured is None, never 0.

The definition lives in `reports` because a record is part of the saved benchmark
result (`reports.benchmark_result`); the client in `checks.load` creates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from pydantic import ConfigDict

ERROR_EXCERPT_CHARS = 200


class ErrorKind(StrEnum):
    """Why a request failed. An error event inside a 200 stream is STREAM_ERROR, not HTTP."""

    HTTP = "http"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    MALFORMED_STREAM = "malformed_stream"
    EMPTY_STREAM = "empty_stream"
    STREAM_ERROR = "stream_error"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"  # given up on purpose by a cancellation load (--cancel-rate), as a user closing a tab


NOT_TIMED = frozenset({ErrorKind.CANCELLED, ErrorKind.ABANDONED})  # counted apart: neither timed nor failures


class TokenSource(StrEnum):
    """Where a record's token counts came from, best first. CHUNKS counts one token per content chunk."""

    USAGE = "usage"
    TOKENIZER = "tokenizer"
    CHUNKS = "chunks"


def excerpt(text: str) -> str:
    """A response body cut to what a record keeps: whitespace runs collapsed, at most 200 characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= ERROR_EXCERPT_CHARS else flat[: ERROR_EXCERPT_CHARS - 1] + "…"


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request. Times are run-clock seconds; see the module docstring.

    A stdlib dataclass, not a pydantic model: the client builds one per request in its
    hot path. Pydantic still validates it as a field of a saved document (running
    `__post_init__`), and the config below makes an unknown key in a file an error.
    """

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    request_id: int
    scheduled_s: float | None  # planned send offset for rate profiles; None for concurrency / sync
    ready_s: float  # eligible to send (arrival time reached and, if limited, a slot free)
    send_s: float  # written to the connection
    first_token_s: float | None  # first chunk with non-empty content or reasoning
    chunk_times_s: list[float]  # arrival of every content-bearing chunk; [0] == first_token_s
    chunk_tokens: list[int]  # tokens per such chunk, same length as chunk_times_s
    end_s: float | None  # last byte
    input_tokens: int | None
    output_tokens: int | None
    token_source: TokenSource | None
    ok: bool
    http_status: int | None
    error_kind: ErrorKind | None
    error_excerpt: str | None  # at most ERROR_EXCERPT_CHARS characters; build it with excerpt()
    warmup: bool = False
    output_chars: int = 0
    session: int | None = None  # multi-turn runs: which conversation this turn belongs to
    turn: int | None = None  # ... and which turn of it (1 = the first, sent without history)
    # input tokens the server says its prefix cache served (usage.prompt_tokens_details.cached_tokens); None: not said
    cached_input_tokens: int | None = None

    def __post_init__(self) -> None:
        if len(self.chunk_times_s) != len(self.chunk_tokens):
            raise ValueError(
                f"request {self.request_id}: chunk_times_s has {len(self.chunk_times_s)} entries but chunk_tokens "
                f"has {len(self.chunk_tokens)}; append one token count per content chunk"
            )
        if self.chunk_times_s and self.first_token_s != self.chunk_times_s[0]:
            raise ValueError(
                f"request {self.request_id}: first_token_s ({self.first_token_s}) must equal the first chunk time "
                f"({self.chunk_times_s[0]})"
            )
        if self.ok and self.error_kind is not None:
            raise ValueError(f"request {self.request_id}: ok=True but error_kind={self.error_kind}; clear one of them")
        if not self.ok and self.error_kind is None:
            raise ValueError(f"request {self.request_id}: a failed request needs an error_kind")
        if self.error_excerpt is not None and len(self.error_excerpt) > ERROR_EXCERPT_CHARS:
            raise ValueError(
                f"request {self.request_id}: error_excerpt has {len(self.error_excerpt)} characters "
                f"(at most {ERROR_EXCERPT_CHARS}); build it with reports.records.excerpt()"
            )

    @property
    def ttft_s(self) -> float | None:
        """Time to first token: first content chunk - send."""
        return None if self.first_token_s is None else self.first_token_s - self.send_s

    @property
    def e2e_s(self) -> float | None:
        """End-to-end latency: last byte - send."""
        return None if self.end_s is None else self.end_s - self.send_s

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first: (e2e - ttft) / (output_tokens - 1), for 2 or more tokens."""
        ttft, e2e = self.ttft_s, self.e2e_s
        if ttft is None or e2e is None or self.output_tokens is None or self.output_tokens < 2:
            return None
        return (e2e - ttft) / (self.output_tokens - 1)

    @property
    def itl_s(self) -> list[float]:
        """Inter-chunk latencies: one gap per consecutive pair of content chunks (empty under two chunks)."""
        times = self.chunk_times_s
        return [b - a for a, b in zip(times, times[1:], strict=False)]

    @property
    def queue_s(self) -> float:
        """Time spent eligible but not yet sent (waiting for a concurrency slot): not part of latency."""
        return self.send_s - self.ready_s

    @property
    def schedule_lag_s(self) -> float | None:
        """How late the client became ready against the rate schedule; None without a schedule."""
        return None if self.scheduled_s is None else self.ready_s - self.scheduled_s


def is_measured(record: RequestRecord) -> bool:
    """In the measured window: not warm-up, not cancelled by a stop and not abandoned on purpose by the
    load (those are counted apart, neither timed nor failures).

    The one rule every figure uses: the summary, the checklist's lines, the comparison and the charts.
    """
    return not record.warmup and record.error_kind not in NOT_TIMED
