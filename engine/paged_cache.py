"""The paged KV cache and the per-step batch layout that reads and writes it.

K and V of every layer live in one pool of `num_blocks x block_size` slots;
a sequence owns whichever blocks the block manager gave it (its block
table), so memory is handed out in small fixed pieces and freed the moment a
sequence ends or is preempted. A step's tokens of many sequences are
flattened side by side; `PagedBatch.attend` writes their K/V into their slots
and computes attention per sequence:

- single-token decodes are batched together: their cached keys are gathered
  by slot index into one padded tensor and masked past each length;
- multi-token chunks (prefill pieces, speculative verification) run one SDPA
  each, causal within the chunk and over the sequence's cached prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.config import ModelConfig
from engine.kv_cache import causal_mask, decode_attention
from engine.scheduler_types import SchedulerOutput


class PagedKVCache:
    """Per-layer K and V pools shaped (slots, kv_heads, head_dim)."""

    def __init__(
        self, config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device | str
    ) -> None:
        slots = num_blocks * block_size
        shape = (slots, config.n_kv_heads, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.num_blocks, self.block_size = num_blocks, block_size

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    @staticmethod
    def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        """K + V of one block across all layers: what one unit of the pool costs."""
        element = torch.empty((), dtype=dtype).element_size()
        return 2 * config.n_layers * block_size * config.n_kv_heads * config.head_dim * element


@dataclass(slots=True)
class Segment:
    """A multi-token chunk of one sequence: rows [row, row + n) of the step, keys at `slots`."""

    row: int
    n: int
    slots: torch.Tensor  # (context,) slot indices of all keys this chunk attends to, in position order


@dataclass(slots=True)
class PagedBatch:
    """One step's layout over a `PagedKVCache`; implements the model's `AttentionCache`."""

    cache: PagedKVCache
    ids: torch.Tensor  # (tokens,)
    positions: torch.Tensor  # (tokens,)
    slot_mapping: torch.Tensor  # (tokens,) where each token's K/V is written
    decode_rows: torch.Tensor | None  # (decodes,) rows of single-token decodes
    decode_slots: torch.Tensor | None  # (decodes, max_len) key slots, padded with 0
    decode_valid: torch.Tensor | None  # (decodes, 1, 1, max_len) True where a key exists
    segments: list[Segment]
    decode_only: bool = False  # every token is a single-token decode, in row order (no scatter needed)

    @property
    def compilable(self) -> bool:
        """Decode-only steps have one regular shape; mixed steps loop over a varying list of segments."""
        return self.decode_only

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        _, n_tok, n_heads, dim = q.shape
        k_pool, v_pool = self.cache.keys[layer], self.cache.values[layer]
        k_pool.index_copy_(0, self.slot_mapping, k[0].to(k_pool.dtype))
        v_pool.index_copy_(0, self.slot_mapping, v[0].to(v_pool.dtype))
        q0 = q[0]
        out = q0.new_empty(n_tok, n_heads, dim)
        n_kv = k_pool.shape[1]
        if self.decode_rows is not None and self.decode_slots is not None:
            bd, width = self.decode_slots.shape
            q_rows = q0 if self.decode_only else q0.index_select(0, self.decode_rows)
            qd = q_rows.view(bd, n_kv, n_heads // n_kv, dim)
            # index_select on the flattened slots is ~2.5x faster than pool[slots_2d] (measured: 7 vs 18 us)
            flat = self.decode_slots.view(-1)
            kd = k_pool.index_select(0, flat).view(bd, width, n_kv, dim).permute(0, 2, 1, 3)
            vd = v_pool.index_select(0, flat).view(bd, width, n_kv, dim).permute(0, 2, 1, 3)
            scores = torch.matmul(qd, kd.transpose(-1, -2)).mul_(scale)
            scores.masked_fill_(~self.decode_valid, float("-inf"))
            yd = torch.matmul(scores.softmax(-1, dtype=torch.float32).to(vd.dtype), vd)
            if self.decode_only:
                return yd.reshape(1, n_tok, n_heads * dim).to(q.dtype)
            out.index_copy_(0, self.decode_rows, yd.reshape(bd, n_heads, dim).to(out.dtype))
        for seg in self.segments:
            qs = q0[seg.row : seg.row + seg.n].transpose(0, 1)[None]
            ks = k_pool.index_select(0, seg.slots).transpose(0, 1)[None]
            vs = v_pool.index_select(0, seg.slots).transpose(0, 1)[None]
            ctx = seg.slots.shape[0]
            if seg.n == 1:
                y = decode_attention(qs.reshape(1, n_kv, n_heads // n_kv, dim), ks, vs, scale)
            else:
                mask = causal_mask(seg.n, ctx - seg.n, q.device)
                y = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=True)
            out[seg.row : seg.row + seg.n] = y.reshape(n_heads, seg.n, dim).transpose(0, 1).to(out.dtype)
        return out.reshape(1, n_tok, n_heads * dim)


def _slots(block_table: list[int], start: int, end: int, block_size: int) -> list[int]:
    return [block_table[p // block_size] * block_size + p % block_size for p in range(start, end)]


def build_batch(out: SchedulerOutput, cache: PagedKVCache, device: torch.device | str) -> PagedBatch:
    """Flatten a scheduler step into tensors: ids, positions, write slots and read layouts."""
    bs = cache.block_size
    ids: list[int] = []
    positions: list[int] = []
    slot_mapping: list[int] = []
    decode_rows: list[int] = []
    decode_keys: list[list[int]] = []
    segments: list[Segment] = []
    for item in out.items:
        row, end = len(ids), item.start + item.num_tokens
        table = item.seq.block_table
        ids.extend(item.token_ids)
        positions.extend(range(item.start, end))
        slot_mapping.extend(_slots(table, item.start, end, bs))
        keys = _slots(table, 0, end, bs)
        if item.num_tokens == 1:
            decode_rows.append(row)
            decode_keys.append(keys)
        else:
            segments.append(Segment(row, item.num_tokens, torch.tensor(keys, dtype=torch.long, device=device)))
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
    dec_rows = dec_slots = dec_valid = None
    if decode_rows:
        width = max(len(k) for k in decode_keys)
        dec_rows = as_long(decode_rows)
        dec_slots = as_long([k + [0] * (width - len(k)) for k in decode_keys])
        lengths = as_long([len(k) for k in decode_keys])
        dec_valid = (torch.arange(width, device=device)[None, :] < lengths[:, None])[:, None, None, :]
    return PagedBatch(
        cache=cache,
        ids=as_long(ids),
        positions=as_long(positions),
        slot_mapping=as_long(slot_mapping),
        decode_rows=dec_rows,
        decode_slots=dec_slots,
        decode_valid=dec_valid,
        segments=segments,
        decode_only=not segments and len(decode_rows) == len(ids),
    )
