"""A contiguous key/value cache for a batch of sequences that advance together.

Each layer owns a (batch, kv_heads, capacity, head_dim) buffer for K and one
for V. `update()` writes the new positions and returns views of only the
filled part, so attention never reads (or masks) the unused tail: reading the
whole pre-allocated buffer cost 46% of a decode step on this model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from engine.model.aot import AotExample
from engine.model.attention import causal_mask, decode_attention
from engine.model.config import ModelConfig


class KVCache:
    """Per-layer K/V buffers plus the number of filled positions."""

    aot_kind = "contiguous-decode"

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        if capacity < 1 or capacity > config.context_length:
            raise ValueError(f"KV capacity {capacity} must be in 1..{config.context_length}")
        shape = (batch_size, config.n_kv_heads, capacity, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.capacity = capacity
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (batch, kv_heads, new, head_dim) at the current length; return the filled views."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: {end} positions needed, capacity {self.capacity}")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """Append k, v (batch, new, kv_heads, dim) and attend q (batch, new, heads, dim) over the filled part."""
        b, t, n_heads, dim = q.shape
        keys, values = self.update(layer, k.transpose(1, 2), v.transpose(1, 2))
        if t == 1:
            n_kv = keys.shape[1]
            y = decode_attention(q.reshape(b, n_kv, n_heads // n_kv, dim), keys, values, scale)
            return y.reshape(b, 1, n_heads * dim)
        qt = q.transpose(1, 2)
        if keys.shape[2] == t:
            y = F.scaled_dot_product_attention(qt, keys, values, is_causal=True, enable_gqa=True)
        else:
            mask = causal_mask(t, keys.shape[2] - t, q.device)
            y = F.scaled_dot_product_attention(qt, keys, values, attn_mask=mask, enable_gqa=True)
        return y.transpose(1, 2).reshape(b, t, n_heads * dim)

    def advance(self, n: int) -> None:
        """Commit n positions after every layer has been updated for this step."""
        self.length += n

    def truncate(self, length: int) -> None:
        """Forget positions past `length` (rejected speculative drafts)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate KV cache of length {self.length} to {length}")
        self.length = length

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    # -- ahead-of-time compiled decode (engine/model/aot.py) ---------------------------

    def aot_inputs(self, ids: torch.Tensor) -> list[torch.Tensor] | None:
        """A single-sequence, single-token step has a compiled graph; prefill runs eagerly.

        The filled length travels as the size of a throwaway tensor: a size is a dynamic
        dimension of the graph, a Python int would be frozen into it.
        """
        if ids.shape != (1, 1) or self.keys[0].shape[0] != 1:
            return None
        return [torch.empty(self.length + 1, dtype=torch.uint8), *self.keys, *self.values]

    @classmethod
    def aot_rebuild(cls, tensors: Sequence[torch.Tensor]) -> KVCache:
        """The cache a compiled step traces: the given buffers, `length` read from the probe's size."""
        probe, buffers = tensors[0], list(tensors[1:])
        half = len(buffers) // 2
        cache = cls.__new__(cls)
        cache.keys, cache.values = buffers[:half], buffers[half:]
        cache.length = probe.shape[0] - 1
        cache.capacity = probe.shape[0]  # the step writes position `length` and needs no more
        return cache

    @classmethod
    def aot_example(cls, config: ModelConfig, dtype: torch.dtype) -> AotExample:
        """One decode at position 8 of a 16-slot cache filled with seeded noise."""
        length, capacity = 8, 16
        gen = torch.Generator().manual_seed(0)
        shape = (1, config.n_kv_heads, capacity, config.head_dim)
        buffers = [torch.randn(shape, generator=gen).to(dtype) for _ in range(2 * config.n_layers)]
        filled = torch.export.Dim("filled", min=1, max=config.context_length)
        slots = torch.export.Dim("capacity", min=1, max=config.context_length)
        return AotExample(
            ids=torch.tensor([[17]]),
            positions=torch.tensor([length]),
            cache=[torch.empty(length + 1, dtype=torch.uint8), *buffers],
            tokens_dim=None,
            cache_dims=[{0: filled}] + [{2: slots}] * (2 * config.n_layers),
        )
