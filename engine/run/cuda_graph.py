"""Single-stream decode replayed as one CUDA graph.

On a GPU a decode step of a small model is ~1,600 tiny kernels, and launching them
from Python costs ~10 ms whatever the weight format (docs/BENCHMARKS.md measured 95
tok/s on an H200, 1% of its bandwidth bound). Recording the step once and replaying
it makes the launch cost one call. A graph replays fixed shapes at fixed addresses,
so the step here differs from `KVCache`'s in three ways: the position is a device
tensor (RoPE rows gathered, K/V written with `index_copy_`), attention reads the whole
fixed-capacity cache with unfilled positions masked out, and nothing in the step
reads a value back to the host. Prefill (many tokens) stays eager.
"""

from __future__ import annotations

import torch

from engine.model.attention import causal_mask
from engine.model.config import ModelConfig
from engine.model.transformer import Transformer


class StaticKVCache:
    """K/V buffers of one sequence whose decode step has static shapes (an `AttentionCache`)."""

    def __init__(self, config: ModelConfig, capacity: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (1, config.n_kv_heads, capacity, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.capacity = capacity
        self.length = 0  # filled positions, kept on the host for prefill
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # the decoded token's position
        self._slots = torch.arange(capacity, device=device)
        self._masked = torch.zeros(capacity, dtype=torch.bool, device=device)

    def begin_decode(self) -> None:
        """Per step, inside the graph: which cache slots the new token must not see."""
        torch.gt(self._slots, self.position, out=self._masked)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        b, t, n_heads, dim = q.shape
        keys, values = self.keys[layer], self.values[layer]
        if t == 1:  # decode: static shapes, no host reads
            keys.index_copy_(2, self.position, k.transpose(1, 2))
            values.index_copy_(2, self.position, v.transpose(1, 2))
            n_kv = keys.shape[1]
            scores = torch.matmul(q.reshape(1, n_kv, n_heads // n_kv, dim), keys.transpose(-1, -2)).mul_(scale)
            scores.masked_fill_(self._masked, float("-inf"))
            y = torch.matmul(scores.softmax(-1, dtype=torch.float32).to(values.dtype), values)
            return y.reshape(1, 1, n_heads * dim)
        start, end = self.length, self.length + t
        keys[:, :, start:end] = k.transpose(1, 2)
        values[:, :, start:end] = v.transpose(1, 2)
        if start == 0:
            y = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), keys[:, :, :end], values[:, :, :end], is_causal=True, enable_gqa=True
            )
        else:  # a later chunk of a prompt: same as the eager cache
            y = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2),
                keys[:, :, :end],
                values[:, :, :end],
                attn_mask=causal_mask(t, start, q.device),
                enable_gqa=True,
            )
        return y.transpose(1, 2).reshape(b, t, n_heads * dim)


class CudaGraphDecoder:
    """Eager prefill, then every single-token step replayed from one captured graph.

    One decoder serves requests one after another (the `Engine` is single-stream):
    `reset()` empties it; stale K/V past the new length stay masked.
    """

    def __init__(self, model: Transformer, capacity: int, capture: bool = True) -> None:
        device = model.rope.cos.device
        if capture and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a model on a CUDA device, this one is on {device}")
        self.model = model
        self.capture = capture  # False runs the same static step eagerly (tests on CPU)
        self.cache = StaticKVCache(model.config, capacity, model.act_dtype, device)
        self._token = torch.zeros((1, 1), dtype=torch.long, device=device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._logits: torch.Tensor | None = None

    def reset(self) -> None:
        self.cache.length = 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (1, 1, vocab) after feeding ids (1, t): eager for a prompt, graph replay for one token.

        The returned tensor of a replay is the graph's output buffer: read it before the next call.
        """
        t = ids.shape[1]
        if self.cache.length + t > self.cache.capacity:
            raise ValueError(f"decoder capacity {self.cache.capacity} exceeded at {self.cache.length + t} positions")
        if t > 1:
            logits = self.model(ids, self.cache.length, self.cache)
        else:
            self._token.copy_(ids)
            self.cache.position.fill_(self.cache.length)
            logits = self._replay()
        self.cache.length += t
        return logits

    def _step(self) -> torch.Tensor:
        self.cache.begin_decode()
        cos, sin = self.model.rope.gather(self.cache.position)
        h = self.model._blocks(self._token, (cos, sin, self.model.rope.half), self.cache)
        return self.model.logits(h)

    def _replay(self) -> torch.Tensor:
        if not self.capture:
            return self._step()
        if self._graph is None or self._logits is None:
            self._graph, self._logits = self._capture()
        self._graph.replay()
        return self._logits

    def _capture(self) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Warm up on a side stream (as PyTorch requires), then record one step.

        The warm-up steps write this step's K/V at this step's position: the replay that
        follows writes the same values, so they change nothing.
        """
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            logits = self._step()
        return graph, logits
