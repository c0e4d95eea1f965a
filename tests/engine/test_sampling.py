"""Sampling helpers: the categorical draw behind temperature sampling (right distribution, never a zero-probability
token, seeded) and the greedy argmax."""

from __future__ import annotations

import torch

from engine.sampling import SamplingParams, argmax_ids, draw, sample_token


def test_draw_follows_the_distribution() -> None:
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    gen = torch.Generator().manual_seed(1)
    counts = torch.bincount(torch.tensor([draw(probs, gen) for _ in range(40_000)]), minlength=4).double() / 40_000
    assert torch.allclose(counts, probs.double(), atol=0.01)


def test_draw_never_picks_a_zero_probability_token() -> None:
    probs = torch.tensor([0.0, 0.5, 0.0, 0.0, 0.5, 0.0])
    gen = torch.Generator().manual_seed(2)
    assert {draw(probs, gen) for _ in range(5_000)} == {1, 4}


def test_a_seed_fixes_the_sampled_tokens() -> None:
    logits = torch.randn(49_152, generator=torch.Generator().manual_seed(3))
    params = SamplingParams(temperature=0.8, top_p=0.95)

    def tokens(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return [sample_token(logits, params, gen)[0] for _ in range(20)]

    assert tokens(7) == tokens(7)
    assert tokens(7) != tokens(8)


def test_argmax_ids_matches_torch_with_ties_nan_and_strides() -> None:
    torch.manual_seed(0)
    rows = torch.randn(8, 49152)
    assert argmax_ids(rows) == rows.argmax(-1).tolist()
    assert argmax_ids(rows[:, ::2]) == rows[:, ::2].argmax(-1).tolist()  # a strided view
    assert argmax_ids(rows[3]) == [int(rows[3].argmax())]
    tied = torch.zeros(2, 10)
    tied[0, [4, 7]] = 5.0
    tied[1, 6] = float("nan")
    assert argmax_ids(tied) == [4, 6] == tied.argmax(-1).tolist()
    assert argmax_ids(rows.to(torch.bfloat16)) == rows.to(torch.bfloat16).argmax(-1).tolist()
