"""The paged KV cache's bookkeeping: which fixed-size block holds which sequence's tokens.

Plain Python over block ids; the tensors live on the model side, which only
reads `Sequence.block_table`. Three ideas:

- **Ref-counted blocks.** A block belongs to every sequence whose table lists
  it; it returns to the free pool when the last one lets go.
- **Prefix caching by chained hash.** Once a block is full and its K/V are
  computed it is registered under hash(previous block's hash, its token ids).
  The chain makes the hash stand for the *whole* prefix up to the block's end,
  so equal token ids at a different position never match. A new sequence
  walks its own full blocks through that map and reuses every hit instead of
  recomputing it.
- **Lazy eviction (LRU).** A registered block whose ref count drops to 0 goes
  to the back of the free pool with its hash kept: a later request can still
  hit it until the pool runs out of never-registered blocks and it is reused.
  Unregistered (partial) blocks are worthless once freed and go to the front.

Not thread-safe: the scheduler thread owns it.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence as Seq

from engine.batch.sequence import Sequence
from engine.errors import EngineError


class NoFreeBlocksError(EngineError):
    """`allocate` was called without `can_allocate` saying yes: a scheduler bug, not load."""


def hash_block(parent: bytes | None, token_ids: Seq[int]) -> bytes:
    """Hash of a full block given the hash of the block before it (None for the first block).

    A cryptographic digest rather than Python's `hash` so that a collision, which
    would silently serve another prompt's K/V, is not a practical concern.
    """
    h = hashlib.blake2b(digest_size=16)
    if parent is not None:
        h.update(parent)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class BlockManager:
    """A pool of `num_blocks` KV blocks of `block_size` token slots each."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.hash_to_block: dict[bytes, int] = {}
        # Free blocks, front = next to be reused. An OrderedDict gives O(1) removal
        # from the middle when a prefix hit revives a cached free block.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.num_queried_tokens = 0
        self.num_hit_tokens = 0
        self.num_evictions = 0

    # ---- state -------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds, cached ones included (they are evictable)."""
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached_free_blocks(self) -> int:
        """Free blocks that still carry a prefix hash and can be hit."""
        return sum(1 for b in self._free if self.block_hash[b] is not None)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by sequences (KV cache usage in /metrics)."""
        return self.num_used_blocks / self.num_blocks

    @property
    def prefix_cache_hit_rate(self) -> float | None:
        """Prompt tokens served from the cache over prompt tokens looked up; None before any lookup."""
        if self.num_queried_tokens == 0:
            return None
        return self.num_hit_tokens / self.num_queried_tokens

    # ---- hashing and lookup -------------------------------------------------------------

    def _full_block_hashes(self, seq: Sequence, n_blocks: int) -> list[bytes]:
        """Extend seq.block_hashes to its first n_blocks full blocks and return it."""
        hashes, bs = seq.block_hashes, self.block_size
        while len(hashes) < n_blocks:
            i = len(hashes)
            parent = hashes[-1] if hashes else None
            hashes.append(hash_block(parent, seq.token_slice(i * bs, (i + 1) * bs)))
        return hashes

    def _match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks that hold seq's leading full blocks, in order.

        At most (num_tokens - 1) // block_size: the last token is always left
        to compute, because the model must run on it to produce the next logits.
        """
        max_blocks = (seq.num_tokens - 1) // self.block_size
        hits: list[int] = []
        for h in self._full_block_hashes(seq, max_blocks):
            block = self.hash_to_block.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    @staticmethod
    def _is_fresh(seq: Sequence) -> bool:
        return not seq.block_table and seq.num_computed_tokens == 0

    def num_prefix_hit_tokens(self, seq: Sequence) -> int:
        """Tokens a fresh sequence would take from the cache on `allocate` (0 if already placed)."""
        return len(self._match_prefix(seq)) * self.block_size if self._is_fresh(seq) else 0

    # ---- allocation --------------------------------------------------------------------

    def _pool_blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks that `allocate(seq, num_new_tokens)` would take out of the free pool."""
        if self._is_fresh(seq):
            hits = self._match_prefix(seq)
            revived = sum(1 for b in hits if self.ref_counts[b] == 0)
            computed, held = len(hits) * self.block_size, len(hits)
        else:
            revived, computed, held = 0, seq.num_computed_tokens, len(seq.block_table)
        target = _ceil_div(computed + num_new_tokens, self.block_size)
        return revived + max(0, target - held)

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Whether slots for `num_new_tokens` past the computed ones (after prefix hits) fit."""
        return self._pool_blocks_needed(seq, num_new_tokens) <= len(self._free)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Grow seq.block_table to cover its computed tokens plus `num_new_tokens`.

        On a fresh sequence it first takes every cached prefix block (sharing it,
        ref count + 1), sets `num_computed_tokens` and `num_cached_prefix_tokens`
        to the tokens hit, and counts the lookup for the hit rate, so
        `num_new_tokens` counts from after the hits (see `num_prefix_hit_tokens`).
        """
        if num_new_tokens < 0:
            raise ValueError(f"num_new_tokens must be >= 0, got {num_new_tokens}")
        if not self.can_allocate(seq, num_new_tokens):
            raise NoFreeBlocksError(
                f"sequence {seq.seq_id} needs {self._pool_blocks_needed(seq, num_new_tokens)} blocks, "
                f"{len(self._free)} free: call can_allocate first"
            )
        if self._is_fresh(seq):
            hits = self._match_prefix(seq)
            for block in hits:
                if self.ref_counts[block] == 0:
                    del self._free[block]
                self.ref_counts[block] += 1
            seq.block_table.extend(hits)
            seq.num_registered_blocks = len(hits)
            seq.num_computed_tokens = seq.num_cached_prefix_tokens = len(hits) * self.block_size
            if seq.num_preemptions == 0:  # a recompute hitting its own blocks is not prompt sharing
                self.num_queried_tokens += seq.num_tokens
                self.num_hit_tokens += seq.num_cached_prefix_tokens
        target = _ceil_div(seq.num_computed_tokens + num_new_tokens, self.block_size)
        while len(seq.block_table) < target:
            seq.block_table.append(self._take_free_block())

    def can_append(self, seq: Sequence, num_tokens: int = 1) -> bool:
        """Decode spelling of `can_allocate`: room for the next token (or 1 + drafts)."""
        return self.can_allocate(seq, num_tokens)

    def append_slots(self, seq: Sequence, num_tokens: int = 1) -> None:
        """Decode spelling of `allocate`."""
        self.allocate(seq, num_tokens)

    def num_allocatable_tokens(self, seq: Sequence) -> int:
        """How many tokens past the computed ones a placed sequence could get slots for right now."""
        slack = len(seq.block_table) * self.block_size - seq.num_computed_tokens
        return max(0, slack) + len(self._free) * self.block_size

    def _take_free_block(self) -> int:
        block, _ = self._free.popitem(last=False)
        old = self.block_hash[block]
        if old is not None:  # evict: its prefix can no longer be hit
            if self.hash_to_block.get(old) == block:
                del self.hash_to_block[old]
            self.block_hash[block] = None
            self.num_evictions += 1
        self.ref_counts[block] = 1
        return block

    # ---- commit and free ---------------------------------------------------------------

    def commit(self, seq: Sequence) -> None:
        """Register every block that is now full and computed, so later requests can hit it.

        Called after each step. Only computed tokens count: slots written for
        rejected speculative drafts hold the wrong K/V until overwritten.
        """
        full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        if full <= seq.num_registered_blocks:
            return
        hashes = self._full_block_hashes(seq, full)
        for i in range(seq.num_registered_blocks, full):
            h, block = hashes[i], seq.block_table[i]
            # If another sequence registered the same prefix first, keep its block;
            # this one stays unregistered and is dropped first when freed.
            if h not in self.hash_to_block and self.block_hash[block] is None:
                self.hash_to_block[h] = block
                self.block_hash[block] = h
        seq.num_registered_blocks = full

    def free(self, seq: Sequence) -> None:
        """Release all of seq's blocks and reset its cache position (finish, abort or preemption).

        Last blocks go first so that, among cached blocks, a prefix's tail is
        evicted before its head (the head is the part other prompts share).
        """
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] < 0:
                raise RuntimeError(f"block {block} freed more often than allocated")
            if self.ref_counts[block] == 0:
                self._free[block] = None
                if self.block_hash[block] is None:
                    self._free.move_to_end(block, last=False)
        seq.block_table.clear()
        seq.num_computed_tokens = 0
        seq.num_registered_blocks = 0

    # ---- invariants --------------------------------------------------------------------

    def verify(self, live: Seq[Sequence]) -> None:
        """Raise RuntimeError if the books disagree with the block tables of `live` sequences.

        Cheap enough for tests and debug runs: ref counts equal table
        references, free means ref 0, a block is shared only when it is a
        registered prefix block, and the hash map and block hashes agree.
        """
        refs = [0] * self.num_blocks
        for seq in live:
            if len(set(seq.block_table)) != len(seq.block_table):
                raise RuntimeError(f"sequence {seq.seq_id} lists a block twice: {seq.block_table}")
            if seq.num_computed_tokens > len(seq.block_table) * self.block_size:
                raise RuntimeError(f"sequence {seq.seq_id} has computed tokens outside its blocks")
            for block in seq.block_table:
                refs[block] += 1
        problems = [
            f"block {b}: ref {self.ref_counts[b]}, referenced {refs[b]}, free={b in self._free}, "
            f"hash={self.block_hash[b] is not None}"
            for b in range(self.num_blocks)
            if refs[b] != self.ref_counts[b]
            or (refs[b] == 0) != (b in self._free)
            or (refs[b] > 1 and self.block_hash[b] is None)
        ]
        problems += [
            f"hash maps to block {b}, which has another hash"
            for h, b in self.hash_to_block.items()
            if self.block_hash[b] != h
        ]
        problems += [
            f"block {b} hash is not in the map"
            for b, h in enumerate(self.block_hash)
            if h is not None and self.hash_to_block.get(h) != b
        ]
        if problems:
            raise RuntimeError("block manager inconsistent: " + "; ".join(problems[:5]))
