"""One request as the scheduler and block manager see it: token ids and bookkeeping, no tensors.

A `Sequence` is the unit every serving component talks about: the scheduler
moves it between queues, the block manager gives it KV blocks, the model side
reads its block table, the server streams its new tokens. Keeping it plain
Python is what lets the scheduler be tested without a model (STYLE.md §5).

The central counter is `num_computed_tokens`: how many leading tokens already
have their K/V in the cache. A step computes tokens
`[num_computed_tokens, num_computed_tokens + n)`; prefill, a prefill chunk, a
recompute after preemption and a decode (n = 1, or 1 + drafts) are all the
same operation with different n, which is what makes chunked prefill and
speculative decoding fit one scheduler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum, auto

from engine.errors import PromptError
from engine.sampling import SamplingParams


class SequenceStatus(Enum):
    """Where a sequence is. A preempted sequence is WAITING again (with `num_preemptions` > 0)."""

    WAITING = auto()
    RUNNING = auto()
    FINISHED_STOPPED = auto()
    FINISHED_LENGTH = auto()
    FINISHED_ABORTED = auto()

    @property
    def is_finished(self) -> bool:
        return self in _FINISH_REASONS


_FINISH_REASONS = {
    SequenceStatus.FINISHED_STOPPED: "stop",
    SequenceStatus.FINISHED_LENGTH: "length",
    SequenceStatus.FINISHED_ABORTED: "abort",
}


@dataclass(slots=True, eq=False)
class Sequence:
    """A prompt, the tokens generated so far, and where its K/V live.

    Identity semantics (`eq=False`): two requests with the same prompt are
    still two sequences.
    """

    seq_id: int
    prompt_token_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    arrival_s: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    # Chained hashes of the full blocks of all_token_ids, filled lazily by the block
    # manager. Token ids only ever grow, so a stored hash never goes stale, even
    # across preemption.
    block_hashes: list[bytes] = field(default_factory=list)
    # How many leading entries of block_table the block manager has offered to the
    # prefix cache (it does so once a block is full and computed).
    num_registered_blocks: int = 0
    num_cached_prefix_tokens: int = 0
    num_preemptions: int = 0

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise PromptError("the prompt is empty: send at least one token")
        self.prompt_token_ids = list(self.prompt_token_ids)

    # ---- token views ----------------------------------------------------------------

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        """Prompt then outputs (a new list; use `token_slice` for a window)."""
        return self.prompt_token_ids + self.output_token_ids

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    def token_slice(self, start: int, end: int) -> list[int]:
        """Tokens [start, end) of prompt + outputs without concatenating the whole sequence."""
        p = len(self.prompt_token_ids)
        if end <= p:
            return self.prompt_token_ids[start:end]
        if start >= p:
            return self.output_token_ids[start - p : end - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - p]

    # ---- progress ---------------------------------------------------------------------

    @property
    def num_uncomputed_tokens(self) -> int:
        """Known tokens whose K/V are not in the cache yet (1 for a sequence in steady decode)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        """Prompt done and only the last sampled token left to feed: a decode, not a prefill chunk."""
        return self.num_output_tokens > 0 and self.num_uncomputed_tokens == 1

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def finish_reason(self) -> str | None:
        """OpenAI's word for why it ended ("stop", "length", "abort"), or None while live."""
        return _FINISH_REASONS.get(self.status)

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
