"""Prompt-lookup (n-gram) drafting for speculative decoding: no second model.

Generated text often repeats spans of its context (code edits, quoting,
summaries, lists). If the last n tokens also occur earlier, the tokens that
followed them there are a cheap guess for what comes next. The target model
checks k guesses in one forward over k + 1 positions; with greedy sampling
the output stays token-for-token what plain decoding would give, because a
draft token is kept only where it equals the target's own pick.

Pure Python over token ids; the verifying forward is model-side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NgramDrafter:
    """Proposes up to `num_speculative_tokens` tokens by matching the last `max_ngram`..`min_ngram` tokens."""

    num_speculative_tokens: int = 4
    max_ngram: int = 3
    min_ngram: int = 1

    def __post_init__(self) -> None:
        if self.num_speculative_tokens < 1:
            raise ValueError(f"num_speculative_tokens must be >= 1, got {self.num_speculative_tokens}")
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {self.min_ngram}..{self.max_ngram}")

    def propose(self, token_ids: Sequence[int], max_tokens: int | None = None) -> list[int]:
        """Draft tokens to verify after `token_ids` (maybe none); `max_tokens` caps k further."""
        k = self.num_speculative_tokens if max_tokens is None else min(self.num_speculative_tokens, max_tokens)
        if k <= 0:
            return []
        return propose_ngram(token_ids, k, self.max_ngram, self.min_ngram)


def propose_ngram(token_ids: Sequence[int], k: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """Tokens that followed the most recent earlier occurrence of the longest matching suffix.

    Longer n-grams are tried first (a longer match is a better predictor); for
    each n the most recent earlier occurrence wins (recent context predicts
    best). Returns at most k tokens, fewer near the end, [] when nothing matches.
    """
    ids = list(token_ids)
    length = len(ids)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        suffix = ids[length - n :]
        last = suffix[-1]
        # Occurrence starting at i ends at i + n - 1 < length - 1 (strictly earlier than the suffix).
        for i in range(length - n - 1, -1, -1):
            if ids[i + n - 1] == last and ids[i : i + n] == suffix:
                return ids[i + n : i + n + k]
    return []


def accept_drafts(draft: Sequence[int], target_picks: Sequence[int]) -> list[int]:
    """Tokens to append after verifying `draft` against the target's greedy picks.

    `target_picks[j]` is the target's choice at the position of `draft[j]`
    (the last is its choice after the whole draft). Keep the longest prefix of
    the draft that matches, then the target's own pick at the first mismatch
    (or after a fully accepted draft): always at least one token, so a step
    is never worse than plain decoding.
    """
    if len(target_picks) != len(draft) + 1:
        raise ValueError(f"need len(draft) + 1 = {len(draft) + 1} target picks, got {len(target_picks)}")
    accepted = 0
    while accepted < len(draft) and draft[accepted] == target_picks[accepted]:
        accepted += 1
    return [*draft[:accepted], target_picks[accepted]]


@dataclass(slots=True)
class SpecDecodeStats:
    """Draft tokens proposed vs accepted, for the acceptance rate in /metrics."""

    num_proposed: int = 0
    num_accepted: int = 0
    num_verify_steps: int = 0

    def record(self, num_proposed: int, num_accepted: int) -> None:
        if not 0 <= num_accepted <= num_proposed:
            raise ValueError(f"accepted {num_accepted} of {num_proposed} proposed drafts is impossible")
        self.num_proposed += num_proposed
        self.num_accepted += num_accepted
        self.num_verify_steps += 1

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted over proposed draft tokens; None before any draft (not measured, not 0)."""
        return self.num_accepted / self.num_proposed if self.num_proposed else None

    @property
    def mean_accepted_per_step(self) -> float | None:
        return self.num_accepted / self.num_verify_steps if self.num_verify_steps else None

    @property
    def tokens_per_target_step(self) -> float | None:
        """What one verifying target forward produced on average: its accepted drafts plus its own token."""
        mean = self.mean_accepted_per_step
        return None if mean is None else 1 + mean
