"""BlockManager without a model: allocation, ref counts, prefix caching, LRU eviction."""

from __future__ import annotations

import pytest

from engine.batch.block_manager import BlockManager, NoFreeBlocksError, hash_block
from engine.batch.sequence import Sequence

BS = 4


def seq(seq_id: int, tokens: list[int]) -> Sequence:
    return Sequence(seq_id, tokens, arrival_s=float(seq_id))


def prefill(bm: BlockManager, s: Sequence) -> None:
    """Place a sequence and pretend the model computed its whole prompt (as the scheduler's step would)."""
    bm.allocate(s, s.num_tokens - bm.num_prefix_hit_tokens(s))
    s.num_computed_tokens = s.num_tokens
    bm.commit(s)


@pytest.mark.parametrize(
    ("num_tokens", "expected_blocks"),
    [(1, 1), (3, 1), (4, 1), (5, 2), (8, 2), (9, 3)],
)
def test_allocate_covers_tokens_and_free_returns_everything(num_tokens: int, expected_blocks: int) -> None:
    bm = BlockManager(num_blocks=8, block_size=BS)
    s = seq(1, list(range(num_tokens)))
    assert bm.can_allocate(s, num_tokens)
    bm.allocate(s, num_tokens)
    assert len(s.block_table) == expected_blocks
    assert bm.num_used_blocks == expected_blocks
    assert bm.num_free_blocks + bm.num_used_blocks == bm.num_blocks
    assert bm.usage == pytest.approx(expected_blocks / 8)
    bm.verify([s])
    bm.free(s)
    assert s.block_table == [] and s.num_computed_tokens == 0
    assert bm.num_free_blocks == 8 and bm.usage == 0.0
    bm.verify([])


def test_out_of_blocks_is_a_refusal_then_a_named_error() -> None:
    bm = BlockManager(num_blocks=2, block_size=BS)
    s = seq(1, list(range(9)))
    assert not bm.can_allocate(s, 9)
    with pytest.raises(NoFreeBlocksError, match="call can_allocate first"):
        bm.allocate(s, 9)
    assert bm.num_free_blocks == 2 and s.block_table == []


def test_append_slot_takes_a_block_only_at_a_block_boundary() -> None:
    bm = BlockManager(num_blocks=4, block_size=BS)
    s = seq(1, [1, 2, 3])
    prefill(bm, s)
    grown = []
    for token in range(10, 16):
        s.append_token(token)
        assert bm.can_append(s)
        bm.append_slots(s)
        grown.append(len(s.block_table))
        s.num_computed_tokens += 1
        bm.commit(s)
    # tokens 4..9: the 4th fits block 0, the 5th opens block 1, the 9th opens block 2
    assert grown == [1, 2, 2, 2, 2, 3]
    bm.verify([s])


def test_common_prefix_shares_blocks_and_counts_hits() -> None:
    bm = BlockManager(num_blocks=10, block_size=BS)
    prefix = [1, 2, 3, 4, 5, 6, 7, 8]
    a, b = seq(1, [*prefix, 9, 10, 11]), seq(2, [*prefix, 20, 21])
    prefill(bm, a)
    assert bm.num_prefix_hit_tokens(b) == 8
    prefill(bm, b)
    assert b.block_table[:2] == a.block_table[:2]
    assert b.block_table[2] != a.block_table[2]
    assert b.num_cached_prefix_tokens == 8 and a.num_cached_prefix_tokens == 0
    assert [bm.ref_counts[x] for x in a.block_table] == [2, 2, 1]
    assert bm.num_used_blocks == 4
    assert bm.prefix_cache_hit_rate == pytest.approx(8 / (11 + 10))
    bm.verify([a, b])
    bm.free(a)
    assert [bm.ref_counts[x] for x in b.block_table] == [1, 1, 1]
    bm.verify([b])
    bm.free(b)
    assert bm.num_free_blocks == 10
    bm.verify([])


def test_hit_rate_is_none_before_any_lookup() -> None:
    assert BlockManager(4, BS).prefix_cache_hit_rate is None


@pytest.mark.parametrize(
    ("first", "second", "hit_tokens"),
    [
        ([1, 2, 3, 4, 5, 6, 7, 8, 0], [5, 6, 7, 8, 0], 0),  # same block content at position 0: no hit
        ([1, 2, 3, 4, 5, 6, 7, 8, 0], [9, 9, 9, 9, 5, 6, 7, 8, 0], 0),  # same 2nd block, other 1st block
        ([1, 2, 3, 4, 5, 6, 7, 8, 0], [1, 2, 3, 4, 5, 6, 7, 9, 0], 4),  # diverges inside block 2
        ([1, 2, 3, 4, 5, 6, 7, 8, 0], [1, 2, 3, 4, 5, 6, 7, 8, 1], 8),
        ([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8], 4),  # last token is always recomputed
        ([1, 2, 3], [1, 2, 3, 4, 5], 0),  # a partial block is never cached
    ],
)
def test_hashes_chain_over_the_whole_prefix(first: list[int], second: list[int], hit_tokens: int) -> None:
    bm = BlockManager(num_blocks=10, block_size=BS)
    prefill(bm, seq(1, first))
    assert bm.num_prefix_hit_tokens(seq(2, second)) == hit_tokens


def test_hash_block_depends_on_parent_and_tokens() -> None:
    root = hash_block(None, [1, 2, 3, 4])
    assert root == hash_block(None, [1, 2, 3, 4])
    assert hash_block(root, [5, 6, 7, 8]) != hash_block(None, [5, 6, 7, 8])
    assert hash_block(root, [5, 6, 7, 8]) != hash_block(hash_block(None, [0, 2, 3, 4]), [5, 6, 7, 8])


def test_blocks_register_only_once_full_and_computed() -> None:
    bm = BlockManager(num_blocks=10, block_size=BS)
    a = seq(1, list(range(1, 11)))
    bm.allocate(a, 10)  # slots for all 10, but only 6 computed so far (a prefill chunk)
    a.num_computed_tokens = 6
    bm.commit(a)
    assert len(bm.hash_to_block) == 1
    assert bm.num_prefix_hit_tokens(seq(2, list(range(1, 11)))) == 4
    a.num_computed_tokens = 10
    bm.commit(a)
    assert len(bm.hash_to_block) == 2
    assert bm.num_prefix_hit_tokens(seq(3, list(range(1, 11)))) == 8


def test_freed_blocks_stay_hittable_until_reused() -> None:
    bm = BlockManager(num_blocks=4, block_size=BS)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    a = seq(1, prompt)
    prefill(bm, a)
    cached = a.block_table[:2]
    bm.free(a)
    assert bm.num_free_blocks == 4 and bm.num_cached_free_blocks == 2
    b = seq(2, prompt)
    prefill(bm, b)  # revives the cached free blocks
    assert b.block_table[:2] == cached and b.num_cached_prefix_tokens == 8
    bm.verify([b])
    bm.free(b)
    # Two unrelated one-block requests take the uncached free blocks first...
    c, d = seq(3, [50, 51]), seq(4, [60, 61])
    prefill(bm, c)
    prefill(bm, d)
    assert not set(cached) & {*c.block_table, *d.block_table}
    assert bm.num_prefix_hit_tokens(seq(5, prompt)) == 8
    # ...and one more evicts the least recently freed cached block: the tail of the prefix.
    e = seq(6, [70, 71])
    prefill(bm, e)
    assert e.block_table == [cached[1]]
    assert bm.num_evictions == 1
    assert bm.num_prefix_hit_tokens(seq(7, prompt)) == 4
    bm.verify([c, d, e])


def test_same_prefix_computed_twice_registers_one_block() -> None:
    bm = BlockManager(num_blocks=6, block_size=BS)
    a, b = seq(1, [1, 2, 3, 4, 5]), seq(2, [1, 2, 3, 4, 6])
    bm.allocate(a, 5)
    bm.allocate(b, 5)  # both placed before either was computed: no sharing possible
    for s in (a, b):
        s.num_computed_tokens = 5
        bm.commit(s)
    assert bm.hash_to_block == {a.block_hashes[0]: a.block_table[0]}
    duplicate = b.block_table[0]
    bm.verify([a, b])
    bm.free(b)
    c = seq(3, [90])
    prefill(bm, c)
    assert c.block_table == [duplicate]  # the unregistered copy is reused first
    bm.verify([a, c])


def test_preempted_sequence_hits_its_own_blocks_but_not_the_hit_rate() -> None:
    bm = BlockManager(num_blocks=6, block_size=BS)
    a = seq(1, list(range(1, 10)))
    prefill(bm, a)
    queried = bm.num_queried_tokens
    bm.free(a)
    a.num_preemptions += 1
    bm.allocate(a, 1)
    assert a.num_computed_tokens == 8 and a.num_cached_prefix_tokens == 8
    assert bm.num_queried_tokens == queried and bm.num_hit_tokens == 0


def test_verify_catches_a_double_owned_block() -> None:
    bm = BlockManager(num_blocks=4, block_size=BS)
    a, b = seq(1, [1, 2]), seq(2, [3, 4])
    bm.allocate(a, 2)
    b.block_table = list(a.block_table)
    with pytest.raises(RuntimeError, match="inconsistent"):
        bm.verify([a, b])


@pytest.mark.parametrize(("num_blocks", "block_size"), [(0, 4), (4, 0)])
def test_bad_pool_shape_is_a_value_error(num_blocks: int, block_size: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BlockManager(num_blocks, block_size)
