"""Attention helpers both KV caches share: the contiguous one (engine/run/kv_cache.py) and the paged one
(engine/batch/paged_cache.py). They live with the model, below both, so neither cache imports the other.
"""

from __future__ import annotations

import torch


def causal_mask(n_new: int, start: int, device: torch.device) -> torch.Tensor:
    """Boolean mask (n_new, start + n_new): query i sees keys 0..start+i."""
    q_pos = torch.arange(start, start + n_new, device=device)[:, None]
    k_pos = torch.arange(start + n_new, device=device)[None, :]
    return k_pos <= q_pos


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One query token per sequence against its cached keys, GQA without repeating K/V.

    q (b, kv_heads, group, head_dim); k, v (b, kv_heads, length, head_dim).
    Three small ops beat SDPA's flash kernel here, whose per-call set-up cost
    dominated a 64-position decode step.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)
    return torch.matmul(scores.softmax(-1, dtype=torch.float32).to(v.dtype), v)
