"""The Llama transformer: token ids in, logits out. No I/O, no weight formats.

Linear layers and the embedding come from factories passed by the loader, so
the same math runs over fp32, bf16, int8, int4 or fp8 weights. Q/K/V and
gate/up projections are fused (one matmul each) because at this model size
Python dispatch, not arithmetic, dominates a decode step.

RoPE uses the rotate-half form; the loader undoes llama.cpp's Q/K row
permutation so that this matches the reference (HF transformers) exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig
from engine.kv_cache import KVCache

LinearFactory = Callable[[str, int, int], nn.Module]
"""(parameter name, in_features, out_features) -> an empty linear module of the chosen format."""

RopeArgs = tuple[torch.Tensor, torch.Tensor, int]
"""(cos, sin, half) for the positions of one forward call, computed once and shared by every layer."""


class RMSNorm(nn.Module):
    """Root-mean-square norm as one fused op (`F.rms_norm` accumulates in fp32 for bf16 input).

    The weight stays fp32 (the GGUF's own precision); its cast to the activation
    dtype is made once and reused, not redone on each of the 61 calls per token.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.shape = (dim,)
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self._cast: torch.Tensor | None = None

    def post_load(self) -> None:
        self._cast = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._cast
        if w is None or w.dtype != x.dtype:
            w = self._cast = self.weight.detach().to(x.dtype)
        return F.rms_norm(x, self.shape, w, self.eps)


class Rotary(nn.Module):
    """Precomputed RoPE tables for every position of the context (rotate-half form).

    `sin` carries the sign of rotate-half (-sin on the first half), so a rotation
    is x * cos + roll(x, half) * sin: four ops instead of seven.
    """

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        half = config.head_dim // 2
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, half, dtype=torch.float64, device=device) / half))
        pos = torch.arange(config.context_length, dtype=torch.float64, device=device)
        angles = torch.outer(pos, inv_freq)
        sin = angles.sin()
        self.half = half
        self.register_buffer("cos", torch.cat([angles.cos()] * 2, dim=-1).to(dtype), persistent=False)
        self.register_buffer("sin", torch.cat([-sin, sin], dim=-1).to(dtype), persistent=False)

    def tables(self, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions start..start+n, shaped (n, 1, head_dim) to broadcast over heads."""
        return self.cos[start : start + n, None], self.sin[start : start + n, None]

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, half: int) -> torch.Tensor:
        """Rotate x (batch, tokens, heads, head_dim)."""
        return x * cos + x.roll(half, dims=-1) * sin


def _causal_mask(n_new: int, start: int, device: torch.device) -> torch.Tensor:
    """Boolean mask (n_new, start + n_new): query i sees keys 0..start+i."""
    q_pos = torch.arange(start, start + n_new, device=device)[:, None]
    k_pos = torch.arange(start + n_new, device=device)[None, :]
    return k_pos <= q_pos


def _decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One query token per sequence against the whole filled cache, GQA without repeating K/V.

    q (b, kv_heads, group, head_dim); k, v (b, kv_heads, length, head_dim).
    Three small ops beat SDPA's flash kernel here, whose per-call set-up cost
    dominated a 64-position decode step.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)
    return torch.matmul(scores.softmax(-1, dtype=torch.float32).to(v.dtype), v)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, make_linear: LinearFactory) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.scale = config.head_dim**-0.5
        q_dim, kv_dim = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
        self.wqkv = make_linear(f"layers.{layer}.attention.wqkv", config.hidden_size, q_dim + 2 * kv_dim)
        self.wo = make_linear(f"layers.{layer}.attention.wo", q_dim, config.hidden_size)

    def forward(self, x: torch.Tensor, start: int, rope: RopeArgs, cache: KVCache | None) -> torch.Tensor:
        b, t, _ = x.shape
        h, kv = self.n_heads, self.n_kv_heads
        qkv = self.wqkv(x).view(b, t, h + 2 * kv, self.head_dim)
        qk = Rotary.rotate(qkv[:, :, : h + kv], *rope)
        q = qk[:, :, :h].transpose(1, 2)
        k = qk[:, :, h:].transpose(1, 2)
        v = qkv[:, :, h + kv :].transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        if t == 1:
            y = _decode_attention(q.reshape(b, kv, h // kv, self.head_dim), k, v, self.scale)
        elif k.shape[2] == t:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            mask = _causal_mask(t, k.shape[2] - t, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1) if t > 1 else y.reshape(b, 1, -1))


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), gate and up fused into one matmul."""

    def __init__(self, config: ModelConfig, layer: int, make_linear: LinearFactory) -> None:
        super().__init__()
        self.ffn_size = config.ffn_size
        self.w13 = make_linear(f"layers.{layer}.feed_forward.w13", config.hidden_size, 2 * config.ffn_size)
        self.w2 = make_linear(f"layers.{layer}.feed_forward.w2", config.ffn_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).split(self.ffn_size, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, make_linear: LinearFactory) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.hidden_size, config.rms_eps)
        self.attention = Attention(config, layer, make_linear)
        self.ffn_norm = RMSNorm(config.hidden_size, config.rms_eps)
        self.feed_forward = FeedForward(config, layer, make_linear)

    def forward(self, x: torch.Tensor, start: int, rope: RopeArgs, cache: KVCache | None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), start, rope, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Embedding -> blocks -> final norm -> output head (tied to the embedding or not).

    `embedding` must provide `lookup(ids)` and, when tied, `project(h)`;
    the loader supplies an implementation for each weight format.
    """

    def __init__(
        self,
        config: ModelConfig,
        embedding: nn.Module,
        make_linear: LinearFactory,
        act_dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.config = config
        self.act_dtype = act_dtype
        self.embedding = embedding
        self.layers = nn.ModuleList(Block(config, i, make_linear) for i in range(config.n_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_eps)
        self.output = None if config.tied_embeddings else make_linear("output", config.hidden_size, config.vocab_size)
        self.rope = Rotary(config, act_dtype, device)

    def forward(
        self,
        ids: torch.Tensor,
        start: int = 0,
        cache: KVCache | None = None,
        last_only: bool = True,
    ) -> torch.Tensor:
        """Logits (batch, tokens or 1, vocab) in fp32 for ids (batch, tokens) at positions start.. .

        With a cache, K/V of the new tokens are appended and attention reads
        the cached prefix; the caller commits them with `cache.advance()`.
        """
        if start + ids.shape[1] > self.config.context_length:
            raise ValueError(
                f"positions up to {start + ids.shape[1]} exceed the model context of {self.config.context_length}"
            )
        h = self.embedding.lookup(ids).to(self.act_dtype)
        cos, sin = self.rope.tables(start, ids.shape[1])
        rope = (cos, sin, self.rope.half)
        for block in self.layers:
            h = block(h, start, rope, cache)
        if last_only:
            h = h[:, -1:]
        h = self.norm(h)
        logits = self.embedding.project(h) if self.output is None else self.output(h)
        return logits.float()
