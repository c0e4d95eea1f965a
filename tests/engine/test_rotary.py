"""RoPE tables: stored at half width (the resident-memory fix of issue 23), widened per call, and
equal bit for bit to the full-width rotate-half tables they replace."""

from __future__ import annotations

import pytest
import torch

from engine.model.config import ModelConfig
from engine.model.transformer import Rotary

CONFIG = ModelConfig(
    n_layers=1,
    hidden_size=576,
    n_heads=9,
    n_kv_heads=3,
    ffn_size=1536,
    vocab_size=64,
    context_length=8192,
    rope_theta=100000.0,
)


def full_width(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables as they were stored before: cos repeated, sin as (-sin, sin), computed in fp64."""
    half = CONFIG.head_dim // 2
    inv_freq = 1.0 / (CONFIG.rope_theta ** (torch.arange(0, half, dtype=torch.float64) / half))
    angles = torch.outer(torch.arange(CONFIG.context_length, dtype=torch.float64), inv_freq)
    sin = angles.sin()
    return torch.cat([angles.cos()] * 2, dim=-1).to(dtype), torch.cat([-sin, sin], dim=-1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_widened_tables_equal_the_full_width_ones(dtype: torch.dtype) -> None:
    rope = Rotary(CONFIG, dtype, "cpu")
    cos, sin = full_width(dtype)
    assert rope.cos.shape == (CONFIG.context_length, CONFIG.head_dim // 2)  # half the resident bytes
    c, s = rope.tables(100, 7)
    assert c.shape == (7, 1, CONFIG.head_dim)
    assert torch.equal(c[:, 0], cos[100:107]) and torch.equal(s[:, 0], sin[100:107])
    positions = torch.tensor([0, 5, 8191, 42])
    c, s = rope.gather(positions)
    assert torch.equal(c[:, 0], cos[positions]) and torch.equal(s[:, 0], sin[positions])
