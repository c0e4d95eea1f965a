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

Reads gather rows of one head (head_dim values), not whole slots: the pool is
viewed as (slots x kv_heads, head_dim) and the row index of (sequence, head,
position) is slot * kv_heads + head, so the gather lands directly in the
(sequence, head, position, dim) layout the matmuls want. Gathering whole slots
left K/V head-interleaved, and torch.matmul copied them again before every
product: 0.82 ms vs 0.49 ms per layer for 16 sequences of ~200 positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.batch.scheduler_io import ScheduledSeq, SchedulerOutput
from engine.model.aot import AotExample
from engine.model.attention import causal_mask, decode_attention
from engine.model.config import ModelConfig


def _pool_bytes(keys: list[torch.Tensor], values: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in (*keys, *values))


class PagedKVCache:
    """Per-layer K and V pools shaped (slots, kv_heads, head_dim).

    The pools never change size, so `nbytes` is counted once: the engine loop reads it after every step,
    and summing 60 tensors' sizes there cost ~30 us a step (1% of a one-stream CPU decode step).
    """

    def __init__(
        self,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device | str,
        scratch_block: bool = False,
    ) -> None:
        """`scratch_block` adds one block past the `num_blocks` the block manager hands out (its index is
        `scratch_block`): the padding rows of a CUDA-graph decode step write there (batch/decode_graphs.py)."""
        slots = (num_blocks + scratch_block) * block_size
        shape = (slots, config.n_kv_heads, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.num_blocks, self.block_size = num_blocks, block_size
        self.scratch_block: int | None = num_blocks if scratch_block else None
        self.nbytes = _pool_bytes(self.keys, self.values)

    @classmethod
    def over(cls, keys: list[torch.Tensor], values: list[torch.Tensor]) -> PagedKVCache:
        """Existing pools seen as a cache (block size unknown, 0): what a compiled step traces."""
        cache = cls.__new__(cls)
        cache.keys, cache.values = keys, values
        cache.num_blocks = cache.block_size = 0
        cache.scratch_block = None
        cache.nbytes = _pool_bytes(keys, values)
        return cache

    @staticmethod
    def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        """K + V of one block across all layers: what one unit of the pool costs."""
        element = torch.empty((), dtype=dtype).element_size()
        return 2 * config.n_layers * block_size * config.n_kv_heads * config.head_dim * element


def head_rows(slots: torch.Tensor, n_kv: int) -> torch.Tensor:
    """Row indices into a pool viewed as (slots x n_kv, dim), ordered (..., head, position).

    `slots` is (..., positions); the result is (..., n_kv, positions) flattened.
    """
    heads = torch.arange(n_kv, device=slots.device)[:, None]
    return (slots.unsqueeze(-2) * n_kv + heads).reshape(-1)


@dataclass(slots=True)
class Segment:
    """A multi-token chunk of one sequence: rows [row, row + n) of the step, keys at `key_rows`."""

    row: int
    n: int
    context: int  # keys this chunk attends to (its cached prefix and itself)
    key_rows: torch.Tensor  # (kv_heads x context,) pool rows of those keys, head-major (see head_rows)


@dataclass(slots=True)
class PagedBatch:
    """One step's layout over a `PagedKVCache`; implements the model's `AttentionCache`."""

    cache: PagedKVCache
    ids: torch.Tensor  # (tokens,)
    positions: torch.Tensor  # (tokens,)
    slot_mapping: torch.Tensor  # (tokens,) where each token's K/V is written
    decode_rows: torch.Tensor | None  # (decodes,) rows of single-token decodes
    decode_keys: torch.Tensor | None  # (decodes x kv_heads x max_len,) pool rows of their keys (head_rows), 0-padded
    decode_padding: torch.Tensor | None  # (decodes, 1, 1, max_len) True past a context's end; None for one decode
    segments: list[Segment]
    decode_only: bool = False  # every token is a single-token decode, in row order (no scatter needed)

    aot_kind = "paged-decode"

    def aot_inputs(self, ids: torch.Tensor) -> list[torch.Tensor] | None:
        """Decode-only steps have a compiled graph (any batch size); mixed steps loop over segments, eagerly.

        One decode has no padding mask; the graph takes an all-False one, which masks nothing.
        """
        if not self.decode_only or self.decode_rows is None or self.decode_keys is None:
            return None
        n_kv = self.cache.keys[0].shape[1]
        keys = self.decode_keys.view(self.decode_rows.shape[0], n_kv, -1)
        padding = self.decode_padding
        if padding is None:
            padding = torch.zeros(keys.shape[0], 1, 1, keys.shape[2], dtype=torch.bool, device=keys.device)
        return [self.slot_mapping, self.decode_rows, keys, padding, *self.cache.keys, *self.cache.values]

    @classmethod
    def aot_rebuild(cls, tensors: Sequence[torch.Tensor]) -> PagedBatch:
        """The decode-only batch a compiled step traces (ids and positions are not read by `attend`)."""
        slots, rows, keys, padding, *pools = tensors
        half = len(pools) // 2
        return cls(
            cache=PagedKVCache.over(pools[:half], pools[half:]),
            ids=rows,
            positions=rows,
            slot_mapping=slots,
            decode_rows=rows,
            decode_keys=keys.reshape(-1),
            decode_padding=padding,
            segments=[],
            decode_only=True,
        )

    @classmethod
    def aot_example(cls, config: ModelConfig, dtype: torch.dtype) -> AotExample:
        """Three decodes of 20, 13 and 7 positions in a 64-slot pool filled with seeded noise."""
        lengths, width, slots = [20, 13, 7], 20, 64
        gen = torch.Generator().manual_seed(0)
        shape = (slots, config.n_kv_heads, config.head_dim)
        pools = [torch.randn(shape, generator=gen).to(dtype) for _ in range(2 * config.n_layers)]
        key_slots = torch.tensor([[i * width + p if p < n else 0 for p in range(width)] for i, n in enumerate(lengths)])
        n = len(lengths)
        seqs = torch.export.Dim("seqs", min=1, max=4096)
        keys = torch.export.Dim("keys", min=1, max=config.context_length)
        pool = torch.export.Dim("slots", min=1, max=2**31 - 1)
        length = torch.tensor(lengths)
        return AotExample(
            ids=torch.tensor([[17, 18, 19]]),
            positions=length - 1,
            cache=[
                torch.tensor([i * width + m - 1 for i, m in enumerate(lengths)]),
                torch.arange(n),
                head_rows(key_slots, config.n_kv_heads).view(n, config.n_kv_heads, width),
                (torch.arange(width)[None, :] >= length[:, None])[:, None, None, :],
                *pools,
            ],
            tokens_dim=seqs,
            cache_dims=[{0: seqs}, {0: seqs}, {0: seqs, 2: keys}, {0: seqs, 3: keys}]
            + [{0: pool}] * (2 * config.n_layers),
        )

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        _, n_tok, n_heads, dim = q.shape
        k_pool, v_pool = self.cache.keys[layer], self.cache.values[layer]
        k_pool.index_copy_(0, self.slot_mapping, k[0].to(k_pool.dtype))
        v_pool.index_copy_(0, self.slot_mapping, v[0].to(v_pool.dtype))
        q0 = q[0]
        n_kv = k_pool.shape[1]
        k_rows, v_rows = k_pool.view(-1, dim), v_pool.view(-1, dim)
        if self.decode_rows is not None and self.decode_keys is not None:
            # sizes from tensor shapes, not Python ints: a compiled step then stays dynamic in them
            bd = self.decode_rows.shape[0]
            width = self.decode_keys.shape[0] // (bd * n_kv)
            q_rows = q0 if self.decode_only else q0.index_select(0, self.decode_rows)
            qd = q_rows.view(bd, n_kv, n_heads // n_kv, dim)
            kd = k_rows.index_select(0, self.decode_keys).view(bd, n_kv, width, dim)
            vd = v_rows.index_select(0, self.decode_keys).view(bd, n_kv, width, dim)
            scores = torch.matmul(qd, kd.transpose(-1, -2)).mul_(scale)
            if self.decode_padding is not None:
                scores.masked_fill_(self.decode_padding, float("-inf"))
            yd = torch.matmul(scores.softmax(-1, dtype=torch.float32).to(vd.dtype), vd)
            if self.decode_only:
                return yd.reshape(1, n_tok, n_heads * dim).to(q.dtype)
            out = q0.new_empty(n_tok, n_heads, dim)
            out.index_copy_(0, self.decode_rows, yd.reshape(bd, n_heads, dim).to(out.dtype))
        else:
            out = q0.new_empty(n_tok, n_heads, dim)
        for seg in self.segments:
            qs = q0[seg.row : seg.row + seg.n].transpose(0, 1)[None]
            ks = k_rows.index_select(0, seg.key_rows).view(1, n_kv, seg.context, dim)
            vs = v_rows.index_select(0, seg.key_rows).view(1, n_kv, seg.context, dim)
            if seg.n == 1:
                y = decode_attention(qs.reshape(1, n_kv, n_heads // n_kv, dim), ks, vs, scale)
            else:
                mask = causal_mask(seg.n, seg.context - seg.n, q.device)
                y = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=True)
            out[seg.row : seg.row + seg.n] = y.reshape(n_heads, seg.n, dim).transpose(0, 1).to(out.dtype)
        return out.reshape(1, n_tok, n_heads * dim)


def key_slots(
    tables: Sequence[list[int]], lengths: Sequence[int], block_size: int, device: torch.device | str
) -> torch.Tensor:
    """(sequences, longest length): the pool slot of each cached position of each sequence, 0 past its length.

    Computed from the block tables in tensor ops: a Python list of every position's slot cost
    O(context) interpreter work per sequence and step, 1.5 ms a step for 16 decodes of 1,024 positions
    (6.6 ms for 32 of 2,048), with the GIL held while the event loop waits to stream.
    """
    width = max(lengths)
    blocks = [-(-n // block_size) for n in lengths]
    most = max(blocks)
    table = torch.tensor([t[:k] + [0] * (most - k) for t, k in zip(tables, blocks, strict=True)], device=device)
    offsets = torch.arange(block_size, device=device)
    slots = (table[:, :, None] * block_size + offsets).view(len(lengths), -1)[:, :width]
    return slots.masked_fill(past_end(lengths, device), 0) if min(lengths) < width else slots


def past_end(lengths: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """(sequences, longest length): True at the positions past each sequence's length."""
    return torch.arange(max(lengths), device=device)[None, :] >= _long(lengths, device)[:, None]


def _long(values: Sequence[int], device: torch.device | str) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Tokens of one sequence fed in a step: `token_ids` at positions start.., K/V in `block_table`'s slots."""

    block_table: list[int]
    start: int
    token_ids: list[int]


def chunks_of(items: Sequence[ScheduledSeq]) -> list[Chunk]:
    """The scheduler's work items as chunks: what each feeds, where, through which block table."""
    return [Chunk(i.seq.block_table, i.start, i.token_ids) for i in items]


def build_batch(out: SchedulerOutput, cache: PagedKVCache, device: torch.device | str) -> PagedBatch:
    """Flatten a scheduler step into tensors: ids, positions, write slots and read layouts."""
    return build_chunk_batch(chunks_of(out.items), cache, device)


def build_chunk_batch(chunks: list[Chunk], cache: PagedKVCache, device: torch.device | str) -> PagedBatch:
    """The layout of any list of chunks: the scheduler's step, or a draft model's steps over its own pool."""
    bs, n_kv = cache.block_size, cache.keys[0].shape[1]
    ids: list[int] = []
    positions: list[int] = []
    slot_mapping: list[int] = []
    decodes: list[Chunk] = []
    decode_rows: list[int] = []
    segments: list[Segment] = []
    for chunk in chunks:
        n = len(chunk.token_ids)
        row, end = len(ids), chunk.start + n
        table = chunk.block_table
        ids.extend(chunk.token_ids)
        if n == 1:
            positions.append(chunk.start)
            slot_mapping.append(table[chunk.start // bs] * bs + chunk.start % bs)
            decodes.append(chunk)
            decode_rows.append(row)
        else:
            positions.extend(range(chunk.start, end))
            # the chunk's own slots in Python (O(its tokens), no read back from a GPU); its keys as tensors
            slot_mapping.extend(table[p // bs] * bs + p % bs for p in range(chunk.start, end))
            segments.append(Segment(row, n, end, head_rows(key_slots([table], [end], bs, device)[0], n_kv)))
    dec_rows = dec_keys = dec_padding = None
    if decodes:
        lengths = [c.start + 1 for c in decodes]
        dec_rows = _long(decode_rows, device)
        dec_keys = head_rows(key_slots([c.block_table for c in decodes], lengths, bs, device), n_kv)
        if len(decodes) > 1:  # by count, not by "any padding": a compiled step must not switch graphs
            dec_padding = past_end(lengths, device)[:, None, None, :]
    return PagedBatch(
        cache=cache,
        ids=_long(ids, device),
        positions=_long(positions, device),
        slot_mapping=_long(slot_mapping, device),
        decode_rows=dec_rows,
        decode_keys=dec_keys,
        decode_padding=dec_padding,
        segments=segments,
        decode_only=not segments and len(decode_rows) == len(ids),
    )
