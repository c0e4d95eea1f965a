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
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import ModelConfig

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
        # A buffer (not saved), so a compiled step takes it as an input like any weight
        # instead of baking the traced model's values into its package.
        self._cast: torch.Tensor | None
        self.register_buffer("_cast", None, persistent=False)

    def post_load(self) -> None:
        self._cast = None

    def prepare(self, dtype: torch.dtype) -> None:
        """Make the cast now: a compiled graph must not mutate the module it traces (it would recompile)."""
        self._cast = self.weight.detach().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._cast
        if w is None or w.dtype != x.dtype:
            w = self._cast = self.weight.detach().to(x.dtype)
        return F.rms_norm(x, self.shape, w, self.eps)


class Rotary(nn.Module):
    """Precomputed RoPE tables for every position of the context (rotate-half form).

    The rotation is x * cos + roll(x, half) * sin with sin carrying the sign of rotate-half
    (-sin on the first half): four ops instead of seven. The tables keep one half-width copy
    (cos and sin of each angle, once) and widen the rows a forward call uses: the full-width
    tables repeated every value, 4 MiB of resident memory at SmolLM2's 8,192 positions for a
    widening of one row per decode step. The values are the same, bit for bit.
    """

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        half = config.head_dim // 2
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, half, dtype=torch.float64, device=device) / half))
        pos = torch.arange(config.context_length, dtype=torch.float64, device=device)
        angles = torch.outer(pos, inv_freq)
        self.half = half
        self.register_buffer("cos", angles.cos().to(dtype), persistent=False)
        self.register_buffer("sin", angles.sin().to(dtype), persistent=False)

    @staticmethod
    def _widen(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, half) -> (rows, 1, head_dim): cos repeated, sin as (-sin, sin)."""
        return torch.cat([cos, cos], dim=-1)[:, None], torch.cat([-sin, sin], dim=-1)[:, None]

    def tables(self, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions start..start+n, shaped (n, 1, head_dim) to broadcast over heads."""
        return self._widen(self.cos[start : start + n], self.sin[start : start + n])

    def gather(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin at arbitrary positions (tokens,), shaped (tokens, 1, head_dim)."""
        return self._widen(self.cos[positions], self.sin[positions])

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, half: int) -> torch.Tensor:
        """Rotate x (batch, tokens, heads, head_dim)."""
        return x * cos + x.roll(half, dims=-1) * sin


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, make_linear: LinearFactory) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.scale = config.head_dim**-0.5
        q_dim, kv_dim = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
        self.wqkv = make_linear(f"layers.{layer}.attention.wqkv", config.hidden_size, q_dim + 2 * kv_dim)
        self.wo = make_linear(f"layers.{layer}.attention.wo", q_dim, config.hidden_size)

    def forward(self, x: torch.Tensor, rope: RopeArgs, cache: AttentionCache | None) -> torch.Tensor:
        b, t, _ = x.shape
        h, kv = self.n_heads, self.n_kv_heads
        qkv = self.wqkv(x).view(b, t, h + 2 * kv, self.head_dim)
        qk = Rotary.rotate(qkv[:, :, : h + kv], *rope)
        q, k, v = qk[:, :, :h], qk[:, :, h:], qkv[:, :, h + kv :]
        y = _causal_attention(q, k, v) if cache is None else cache.attend(self.layer, q, k, v, self.scale)
        return self.wo(y)


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """No cache: every position of (b, t, heads, dim) attends causally to the sequence itself."""
    b, t = q.shape[:2]
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    )
    return y.transpose(1, 2).reshape(b, t, -1)


class AttentionCache(Protocol):
    """Where K/V live between steps: the contiguous `KVCache` or the paged cache of the server.

    Which of a cache's steps run compiled under `--compile` is the cache's own call
    (`aot_inputs`, engine/model/aot.py); the others run eagerly.
    """

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """Store k, v (b, t, kv_heads, dim) for `layer` and return attention output (b, t, heads * dim)."""
        ...


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

    def forward(self, x: torch.Tensor, rope: RopeArgs, cache: AttentionCache | None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, cache)
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
        self._compiled_blocks: Callable[..., torch.Tensor] | None = None

    @property
    def compiled(self) -> bool:
        return self._compiled_blocks is not None

    def prepare_compile(self) -> None:
        """Make every lazily built tensor now, so a compiled step sees the model's final layout."""
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.prepare(self.act_dtype)

    def enable_compile(self, blocks: Callable[..., torch.Tensor]) -> None:
        """Run steps over a compilable cache through `blocks` (engine/model/compiled.py's compiled steps)."""
        self.prepare_compile()
        self._compiled_blocks = blocks

    def disable_compile(self) -> None:
        """Back to eager blocks (after a failed compile: the model must keep working)."""
        self._compiled_blocks = None

    def forward(
        self,
        ids: torch.Tensor,
        start: int = 0,
        cache: AttentionCache | None = None,
        last_only: bool = True,
    ) -> torch.Tensor:
        """Logits (batch, tokens or 1, vocab) in fp32 for ids (batch, tokens) at positions start.. .

        With a contiguous `KVCache`, K/V of the new tokens are appended and
        attention reads the cached prefix; the caller commits them with
        `cache.advance()`. Without a cache the sequence attends to itself.
        """
        if start + ids.shape[1] > self.config.context_length:
            raise ValueError(
                f"positions up to {start + ids.shape[1]} exceed the model context of {self.config.context_length}"
            )
        cos, sin = self.rope.tables(start, ids.shape[1])
        h = self._blocks(ids, (cos, sin, self.rope.half), cache)
        return self._logits(h[:, -1:] if last_only else h)

    def forward_flat(self, ids: torch.Tensor, positions: torch.Tensor, cache: AttentionCache) -> torch.Tensor:
        """Hidden states (tokens, hidden) for a flattened batch: ids and positions (tokens,).

        The continuous-batching path: tokens of many sequences side by side,
        each at its own position; the paged cache knows which tokens belong
        to which sequence. Pick the rows to sample, then call `logits()`.
        """
        if int(positions.max()) >= self.config.context_length:
            raise ValueError(f"a position exceeds the model context of {self.config.context_length}")
        cos, sin = self.rope.gather(positions)
        return self._blocks(ids[None], (cos, sin, self.rope.half), cache)[0]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """fp32 logits for final hidden states of any leading shape."""
        return self._logits(h)

    def _blocks(self, ids: torch.Tensor, rope: RopeArgs, cache: AttentionCache | None) -> torch.Tensor:
        if self._compiled_blocks is not None and cache is not None:
            return self._compiled_blocks(ids, rope, cache)
        return self._run_blocks(ids, rope, cache)

    def _run_blocks(self, ids: torch.Tensor, rope: RopeArgs, cache: AttentionCache | None) -> torch.Tensor:
        h = self.embedding.lookup(ids).to(self.act_dtype)
        for block in self.layers:
            h = block(h, rope, cache)
        return h

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)
        logits = self.embedding.project(h) if self.output is None else self.output(h)
        return logits.float()
