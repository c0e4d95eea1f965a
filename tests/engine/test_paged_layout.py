"""The paged step layout against its definition: position p of a sequence lives in slot table[p // bs] * bs + p % bs.

`build_chunk_batch` computes the slots from block tables in tensor ops (a per-position Python list cost
O(context) interpreter work per sequence and step); this holds every index it makes to the definition,
written here position by position, for shuffled block tables, mixed decodes and multi-token chunks.
"""

from __future__ import annotations

import random

import torch

from engine.batch.paged_cache import Chunk, PagedKVCache, build_chunk_batch, key_slots

BLOCK = 4
N_KV = 3


def _cache(num_blocks: int) -> PagedKVCache:
    cache = PagedKVCache.over([torch.zeros(num_blocks * BLOCK, N_KV, 2)], [torch.zeros(num_blocks * BLOCK, N_KV, 2)])
    cache.block_size = BLOCK
    return cache


def _slot(table: list[int], p: int) -> int:
    return table[p // BLOCK] * BLOCK + p % BLOCK


def _rows(slots: list[int]) -> list[int]:
    """Pool rows (slot * kv_heads + head), head-major, as `head_rows` orders them."""
    return [s * N_KV + h for h in range(N_KV) for s in slots]


def _tables(rng: random.Random, lengths: list[int], spare: int) -> list[list[int]]:
    """Block tables over a shuffled pool, each with `spare` blocks more than its length needs."""
    pool = list(range(sum(-(-n // BLOCK) + spare for n in lengths)))
    rng.shuffle(pool)
    tables = []
    for n in lengths:
        k = -(-n // BLOCK) + spare
        tables.append(pool[:k])
        pool = pool[k:]
    return tables


def test_key_slots_follow_the_block_tables_and_pad_with_slot_zero() -> None:
    rng = random.Random(0)
    lengths = [1, 4, 5, 17, 9]
    tables = _tables(rng, lengths, spare=1)
    got = key_slots(tables, lengths, BLOCK, "cpu")
    want = [[_slot(t, p) if p < n else 0 for p in range(max(lengths))] for t, n in zip(tables, lengths, strict=True)]
    assert got.tolist() == want


def test_a_mixed_step_writes_and_reads_the_slots_its_tables_name() -> None:
    rng = random.Random(1)
    # (start, tokens): decodes at several lengths, a prefill chunk after a cached prefix, one from zero.
    shapes = [(6, 1), (0, 7), (12, 1), (3, 5), (0, 1), (20, 1)]
    lengths = [start + n for start, n in shapes]
    tables = _tables(rng, lengths, spare=2)
    chunks = [Chunk(t, s, [rng.randrange(100) for _ in range(n)]) for t, (s, n) in zip(tables, shapes, strict=True)]
    batch = build_chunk_batch(chunks, _cache(sum(len(t) for t in tables)), "cpu")

    assert batch.ids.tolist() == [i for c in chunks for i in c.token_ids]
    assert batch.positions.tolist() == [p for start, n in shapes for p in range(start, start + n)]
    written = [_slot(t, p) for t, (s, n) in zip(tables, shapes, strict=True) for p in range(s, s + n)]
    assert batch.slot_mapping.tolist() == written
    decodes = [i for i, (_, n) in enumerate(shapes) if n == 1]
    rows = [sum(n for _, n in shapes[:i]) for i in decodes]
    assert batch.decode_rows is not None and batch.decode_rows.tolist() == rows
    width = max(lengths[i] for i in decodes)
    want_keys = [_rows([_slot(tables[i], p) if p < lengths[i] else 0 for p in range(width)]) for i in decodes]
    assert batch.decode_keys is not None and batch.decode_keys.tolist() == [r for keys in want_keys for r in keys]
    assert batch.decode_padding is not None
    assert batch.decode_padding[:, 0, 0, :].tolist() == [[p >= lengths[i] for p in range(width)] for i in decodes]
    segments = [i for i, (_, n) in enumerate(shapes) if n > 1]
    assert [(s.row, s.n, s.context) for s in batch.segments] == [
        (sum(n for _, n in shapes[:i]), shapes[i][1], lengths[i]) for i in segments
    ]
    for seg, i in zip(batch.segments, segments, strict=True):
        assert seg.key_rows.tolist() == _rows([_slot(tables[i], p) for p in range(lengths[i])])
    assert not batch.decode_only


def test_one_decode_has_no_padding_and_is_decode_only() -> None:
    table = [7, 2, 5]
    batch = build_chunk_batch([Chunk(table, 9, [42])], _cache(8), "cpu")
    assert batch.decode_only and batch.decode_padding is None
    assert batch.slot_mapping.tolist() == [_slot(table, 9)]
    assert batch.decode_keys is not None and batch.decode_keys.tolist() == _rows([_slot(table, p) for p in range(10)])
