"""The categorical draw behind temperature sampling: right distribution, never a zero-probability token, seeded."""

from __future__ import annotations

import torch

from engine.sampling import SamplingParams, draw, sample_token


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
