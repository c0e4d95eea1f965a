"""Prompt-lookup drafting and draft acceptance on hand-made token lists."""

from __future__ import annotations

import pytest

from engine.batch.ngram_drafter import NgramDrafter, SpecDecodeStats, accept_drafts, propose_ngram


@pytest.mark.parametrize(
    ("tokens", "k", "expected"),
    [
        ([1, 2, 3, 4, 5, 1, 2, 3], 2, [4, 5]),  # trigram match
        ([1, 2, 3, 4, 5, 1, 2, 3], 9, [4, 5, 1, 2, 3]),  # runs to the end of the context
        ([1, 2, 9, 7, 2, 8, 6, 2], 2, [8, 6]),  # unigram: the most recent earlier occurrence wins
        ([7, 2, 3, 8, 1, 2, 3, 9, 5, 2, 3], 2, [9, 5]),  # bigram "2 3": most recent is at 5
        ([5, 1, 2, 3, 6, 4, 2, 3], 3, [6, 4, 2]),  # longest match (trigram fails, bigram hits)
        ([4, 4, 4], 3, [4]),  # overlapping repeat
        ([1, 2, 3, 4], 3, []),  # nothing repeats
        ([1], 3, []),  # too short to have an earlier occurrence
        ([], 3, []),
    ],
)
def test_propose_ngram(tokens: list[int], k: int, expected: list[int]) -> None:
    assert propose_ngram(tokens, k, max_ngram=3, min_ngram=1) == expected


def test_min_ngram_refuses_weak_matches() -> None:
    assert propose_ngram([1, 2, 9, 7, 2], 3, max_ngram=3, min_ngram=2) == []
    assert NgramDrafter(num_speculative_tokens=2, min_ngram=2).propose([6, 1, 2, 3, 1, 2]) == [3, 1]


def test_drafter_caps_k_by_max_tokens() -> None:
    drafter = NgramDrafter(num_speculative_tokens=4)
    assert drafter.propose([1, 2, 3, 4, 5, 6, 1]) == [2, 3, 4, 5]
    assert drafter.propose([1, 2, 3, 4, 5, 6, 1], max_tokens=2) == [2, 3]
    assert drafter.propose([1, 2, 3, 4, 5, 6, 1], max_tokens=0) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"num_speculative_tokens": 0}, "num_speculative_tokens"), ({"min_ngram": 4}, "min_ngram")],
)
def test_drafter_validates(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NgramDrafter(**kwargs)


@pytest.mark.parametrize(
    ("draft", "picks", "expected"),
    [
        ([5, 6, 7], [5, 6, 7, 8], [5, 6, 7, 8]),  # all accepted + the bonus token
        ([5, 6, 7], [5, 9, 7, 8], [5, 9]),  # first mismatch: the target's pick replaces it
        ([5, 6, 7], [1, 6, 7, 8], [1]),  # nothing accepted: same as plain decoding
        ([], [4], [4]),  # no draft
    ],
)
def test_accept_drafts(draft: list[int], picks: list[int], expected: list[int]) -> None:
    assert accept_drafts(draft, picks) == expected


def test_accept_drafts_needs_one_pick_per_position() -> None:
    with pytest.raises(ValueError, match="target picks"):
        accept_drafts([1, 2], [1, 2])


def test_spec_stats() -> None:
    stats = SpecDecodeStats()
    assert stats.acceptance_rate is None and stats.mean_accepted_per_step is None
    assert stats.tokens_per_target_step is None  # not measured, not 1
    stats.record(3, 2)
    stats.record(3, 0)
    assert stats.acceptance_rate == pytest.approx(2 / 6)
    assert stats.mean_accepted_per_step == pytest.approx(1.0)
    assert stats.tokens_per_target_step == pytest.approx(2.0)  # each verify step adds the target's own token
    with pytest.raises(ValueError, match="impossible"):
        stats.record(1, 2)
