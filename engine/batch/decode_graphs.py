"""Decode-only steps of continuous batching replayed from CUDA graphs, one graph per padded shape.

Why: on a GPU a decode step of a small model is ~1,600 small kernels, and launching them
from Python costs far more than running them. docs/BENCHMARKS.md measured it on an H200:
single-stream eager decode at ~1% of the bandwidth bound, its graph replay 6.7-9.5x
faster. The server's batched decode (`BatchEngine`) still launched every kernel of every
step, so every stream count paid the launches that batching was meant to amortize.

A graph replays fixed shapes at fixed addresses, so a step is padded to a *bucket*: the
batch to the next size in `batch_buckets` (powers of two up to `max_num_seqs`), and the keys
a row may see to a power of two >= 256 within `max_model_len` (`graph_capacity`, as for the
single-stream graph). The host writes one small int64 tensor per step, each row's token id,
position and block table padded to the width, and reads nothing back until sampling.
Inside the graph everything else comes from those three:

- the slot each token's K/V is written to, and the pool rows of the keys it reads, are
  looked up in its block table;
- keys past a row's own position are masked;
- padding rows decode token 0 at position 0 in the pool's scratch block (a block the block
  manager never hands out, `PagedKVCache(scratch_block=True)`), so their writes touch no
  sequence's K/V, they all write the same values, and their attention (discarded) sees one
  finite key rather than a row of -inf.

A draft model (`--speculative draft:FORMAT`) gets graphs of its own over its own pool (`GraphPlan`
builds both): its k - 1 one-token drafting forwards per step are the same padded step.

Steps with a prompt chunk or speculative drafts stay eager, as on the CPU's compiled path:
their token count is a different shape every step. `capture=False` runs the very same padded
step eagerly on any device: CI holds it to the eager batch on CPU (tests/engine/test_decode_graphs.py),
and a GPU run holds the captured replays to eager CUDA decoding (tests/engine/test_cuda.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from engine.batch.paged_cache import Chunk, PagedBatch, PagedKVCache, head_rows
from engine.model.transformer import Transformer

GRAPH_CAPACITY_MIN = 256  # widths are rounded up to powers of two so a few graphs serve every request
PAD_TOKEN = 0
"""What a padding row decodes (at position 0, in the scratch block): any valid id would do."""


def cuda_graphs_enabled() -> bool:
    """On by default; `PREFLIGHT_CUDA_GRAPHS=0` turns graph capture off (eager decode) for comparison.

    One switch for both decoders: the server's batched one here and the single-stream one (run/cuda_graph.py).
    """
    return os.environ.get("PREFLIGHT_CUDA_GRAPHS", "1") != "0"


def graph_capacity(needed: int, context_length: int) -> int:
    """The key width (cache capacity) `needed` positions run in: a power of two >= 256, within the context.

    Shared with the single-stream graph (run/cuda_graph.py): one ladder of captured shapes.
    """
    capacity = GRAPH_CAPACITY_MIN
    while capacity < needed:
        capacity *= 2
    return min(capacity, context_length)


def single_decodes(chunks: list[Chunk]) -> bool:
    """Whether a forward's chunks are all one-token decodes: the steps a graph replays."""
    return bool(chunks) and all(len(chunk.token_ids) == 1 for chunk in chunks)


def batch_buckets(max_num_seqs: int) -> list[int]:
    """Batch sizes a graph is captured for: powers of two below `max_num_seqs`, then `max_num_seqs` itself.

    Powers of two keep the padding under half a batch with a handful of graphs (vLLM captures a similar
    ladder); the last bucket is the limit itself, so a full batch is never padded past it.
    """
    sizes, size = [], 1
    while size < max_num_seqs:
        sizes.append(size)
        size *= 2
    return [*sizes, max_num_seqs]


def width_buckets(max_model_len: int) -> list[int]:
    """Every key width a step can need: `graph_capacity`'s powers of two from 256, the last capped at the limit."""
    widths = [graph_capacity(1, max_model_len)]
    while widths[-1] < max_model_len:
        widths.append(graph_capacity(widths[-1] + 1, max_model_len))
    return widths


@dataclass(frozen=True, slots=True)
class GraphPlan:
    """How a batch engine's decode graphs are made: the same for the target and a draft model's own pool."""

    max_num_seqs: int
    max_model_len: int
    capture: bool  # False: the padded step runs eagerly (decode_graphs="uncaptured")

    def build(self, model: Transformer, cache: PagedKVCache) -> DecodeGraphs:
        return DecodeGraphs(model, cache, self.max_num_seqs, self.max_model_len, self.capture)


@dataclass(slots=True)
class _Bucket:
    """One padded shape: its static inputs, and once captured, its graph and output buffer."""

    batch: int
    width: int
    inputs: torch.Tensor  # (batch, 2 + table blocks) int64: token id, position, block table
    key_blocks: torch.Tensor  # (width,) which table entry holds each key position
    key_offsets: torch.Tensor  # (width,) the position's offset inside its block
    positions_ladder: torch.Tensor  # (width,) 0..width-1, for the mask
    rows: torch.Tensor  # (batch,) 0..batch-1: every row is a decode
    graph: torch.cuda.CUDAGraph | None = None
    logits: torch.Tensor | None = None
    replays: int = 0


class DecodeGraphs:
    """The decode-only steps of a `BatchEngine`, padded to buckets and replayed from captured CUDA graphs.

    The server captures every bucket at start-up (`capture_all`); elsewhere a bucket's graph is
    captured the first time a step needs it. All go into one memory pool: steps never overlap, so
    one bucket's intermediates can reuse another's memory; each output buffer stays its own.
    """

    def __init__(
        self, model: Transformer, cache: PagedKVCache, max_num_seqs: int, max_model_len: int, capture: bool = True
    ) -> None:
        device = model.rope.cos.device
        if capture and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a model on a CUDA device, this one is on {device}")
        if cache.scratch_block is None:
            raise ValueError("padded decode steps need a KV pool with a scratch block (scratch_block=True)")
        self.model, self.cache, self.device = model, cache, device
        self.capture = capture
        self.batch_sizes = batch_buckets(max_num_seqs)
        self.max_model_len = max_model_len
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None

    def shape(self, num_seqs: int, needed: int) -> tuple[int, int]:
        """The bucket (batch, width) of a step of `num_seqs` decodes whose longest sees `needed` positions."""
        if num_seqs > self.batch_sizes[-1]:
            raise ValueError(f"{num_seqs} decodes exceed max_num_seqs {self.batch_sizes[-1]}")
        batch = next(size for size in self.batch_sizes if size >= num_seqs)
        return batch, graph_capacity(needed, self.max_model_len)

    @property
    def replays(self) -> dict[tuple[int, int], int]:
        """Steps run per bucket (batch, width): evidence that the graphs, not the eager path, decoded."""
        return {key: bucket.replays for key, bucket in self._buckets.items() if bucket.replays}

    def run(self, decodes: list[Chunk]) -> torch.Tensor:
        """fp32 logits (len(decodes), vocab), one row per decode in order; the buffer is reused by the next run.

        Every chunk must be one token (`is_single_decode`): the scheduler's plain decodes, or a draft model's
        drafting forwards.
        """
        bucket = self._bucket(*self.shape(len(decodes), max(chunk.start for chunk in decodes) + 1))
        table_len = bucket.inputs.shape[1] - 2
        scratch = self.cache.scratch_block
        rows = []  # one list, one tensor: per-row tensor writes would cost more than a GPU step at 32 rows
        for chunk in decodes:
            table = chunk.block_table[:table_len]
            rows.append([chunk.token_ids[0], chunk.start, *table, *[scratch] * (table_len - len(table))])
        rows += [self._padding_row(table_len)] * (bucket.batch - len(decodes))
        bucket.inputs.copy_(torch.tensor(rows, dtype=torch.long))
        bucket.replays += 1
        return self._replay(bucket)[: len(decodes)]

    def capture_all(self) -> int:
        """Capture every bucket's graph now, so that no request waits on a capture (~0.1-0.3 s) mid-run.

        Each bucket runs with padding rows only: they write the scratch block and nothing else, so this
        is safe before any sequence exists. The widest, largest buckets go first: the graphs share one
        memory pool, which the largest sizes. Returns how many graphs there are.
        """
        for width in reversed(width_buckets(self.max_model_len)):
            for batch in reversed(self.batch_sizes):
                bucket = self._bucket(batch, width)
                bucket.inputs.copy_(torch.tensor([self._padding_row(bucket.inputs.shape[1] - 2)] * batch))
                with torch.inference_mode():
                    self._replay(bucket)
        return len(self._buckets)

    def _padding_row(self, table_len: int) -> list[int]:
        """A row that decodes PAD_TOKEN at position 0 in the scratch block: it writes nothing a sequence owns."""
        return [PAD_TOKEN, 0, *[self.cache.scratch_block] * table_len]

    def _bucket(self, batch: int, width: int) -> _Bucket:
        bucket = self._buckets.get((batch, width))
        if bucket is None:
            bs, device = self.cache.block_size, self.device
            ladder = torch.arange(width, device=device)
            blocks = -(-width // bs)
            bucket = self._buckets[(batch, width)] = _Bucket(
                batch=batch,
                width=width,
                inputs=torch.zeros((batch, 2 + blocks), dtype=torch.long, device=device),
                key_blocks=ladder // bs,
                key_offsets=ladder % bs,
                positions_ladder=ladder,
                rows=torch.arange(batch, device=device),
            )
        return bucket

    def _step(self, bucket: _Bucket) -> torch.Tensor:
        """The padded step: K/V slots, key rows and mask from the inputs, then the blocks and the logits."""
        ids, positions, tables = bucket.inputs[:, 0], bucket.inputs[:, 1], bucket.inputs[:, 2:]
        key_slots = tables.index_select(1, bucket.key_blocks) * self.cache.block_size + bucket.key_offsets
        batch = PagedBatch(
            cache=self.cache,
            ids=ids,
            positions=positions,
            slot_mapping=key_slots.gather(1, positions[:, None])[:, 0],
            decode_rows=bucket.rows,
            decode_keys=head_rows(key_slots, self.cache.keys[0].shape[1]),
            decode_padding=(bucket.positions_ladder[None, :] > positions[:, None])[:, None, None, :],
            segments=[],
            decode_only=True,
        )
        model = self.model
        cos, sin = model.rope.gather(positions)
        hidden = model._run_blocks(ids[None], (cos, sin, model.rope.half), batch)
        return model.logits(hidden[0])

    def _replay(self, bucket: _Bucket) -> torch.Tensor:
        if not self.capture:
            return self._step(bucket)
        if bucket.graph is None or bucket.logits is None:
            bucket.graph, bucket.logits = self._capture(bucket)
        bucket.graph.replay()
        return bucket.logits

    def _capture(self, bucket: _Bucket) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Warm up on a side stream (as PyTorch requires), then record one step into the shared pool.

        The warm-up steps write this step's K/V into this step's slots, and so does the replay
        that follows: the same values, so they change nothing. `thread_local` capture: the server's
        other threads never touch CUDA, but a check that fails on their allocations would be wrong.
        """
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(2):
                self._step(bucket)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            logits = self._step(bucket)
        return graph, logits
