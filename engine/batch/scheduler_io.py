"""The scheduler's vocabulary: its config, one step's plan, and the stats it reports.

Separate from `scheduler.py` so the model side and the server can read a
`SchedulerOutput` without the scheduling policy. All plain Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field, replace

from engine.batch.sequence import Sequence


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Serving limits (the server's --max-num-seqs, --max-model-len, --max-queue) and the KV pool shape."""

    max_num_seqs: int = 16
    max_num_batched_tokens: int = 512  # tokens computed per step, all sequences together
    prefill_chunk_size: int = 256  # most prompt tokens one sequence computes per step
    max_queue: int = 64
    max_model_len: int = 2048
    block_size: int = 16
    num_kv_blocks: int = 1024  # sized by the model side from measured free memory
    stop_token_ids: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "prefill_chunk_size", "max_queue", "block_size", "num_kv_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}) so every running sequence can decode each step"
            )
        if self.max_model_len < 2:
            raise ValueError(f"max_model_len must be at least 2, got {self.max_model_len}")
        if self.num_kv_blocks * self.block_size < self.max_model_len:
            raise ValueError(
                f"the KV pool ({self.num_kv_blocks} blocks x {self.block_size} tokens) cannot hold one "
                f"sequence of max_model_len {self.max_model_len}; lower max_model_len or add KV memory"
            )
        object.__setattr__(self, "stop_token_ids", frozenset(self.stop_token_ids))


@dataclass(frozen=True, slots=True)
class ScheduledSeq:
    """One sequence's work in a step: compute positions [start, start + num_tokens).

    The fed tokens are the sequence's known tokens from `start` followed by
    `draft_token_ids` (speculative decoding). `samples` says whether the chunk
    reaches the end of the known tokens, i.e. whether the model must return
    logits (for the last known position and every draft position).
    """

    seq: Sequence
    start: int
    num_tokens: int
    draft_token_ids: tuple[int, ...] = ()
    samples: bool = field(init=False)

    def __post_init__(self) -> None:
        known_end = self.start + self.num_tokens - len(self.draft_token_ids)
        object.__setattr__(self, "samples", known_end == self.seq.num_tokens)

    @property
    def token_ids(self) -> list[int]:
        """Input ids to feed (valid until postprocess appends to the sequence)."""
        known_end = self.start + self.num_tokens - len(self.draft_token_ids)
        return self.seq.token_slice(self.start, known_end) + list(self.draft_token_ids)


@dataclass(slots=True)
class SchedulerOutput:
    """One step's plan. Decodes come first in `items`: the model side may batch them separately."""

    decodes: list[ScheduledSeq] = field(default_factory=list)
    prefills: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def items(self) -> list[ScheduledSeq]:
        return self.decodes + self.prefills

    @property
    def num_decode_tokens(self) -> int:
        return sum(i.num_tokens for i in self.decodes)

    @property
    def num_prefill_tokens(self) -> int:
        return sum(i.num_tokens for i in self.prefills)

    @property
    def is_empty(self) -> bool:
        return not self.decodes and not self.prefills

    def fill_drafts(self, tokens: Mapping[int, Seq[int]]) -> None:
        """Put real draft tokens where the scheduler reserved positions for them.

        A draft model writes K/V for its own drafts, so it drafts after `schedule` has given
        the sequence the slots: the scheduler is handed placeholder drafts (it only counts
        them), and every reserved position is filled here before the target runs.
        """
        filled = []
        for item in self.decodes:
            draft = tokens.get(item.seq.seq_id, ())
            if len(draft) != len(item.draft_token_ids):
                raise ValueError(
                    f"sequence {item.seq.seq_id} reserved {len(item.draft_token_ids)} draft positions, "
                    f"got {len(draft)} draft tokens"
                )
            filled.append(replace(item, draft_token_ids=tuple(draft)) if draft else item)
        self.decodes = filled


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """What /metrics reports about the scheduler; rates are None until measured."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_free_blocks: int
    prefix_cache_hit_rate: float | None
    num_preemptions: int
    spec_acceptance_rate: float | None
