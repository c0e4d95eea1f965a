"""Draft-model speculation: the served model, loaded again in a cheaper format, proposes k tokens.

The draft keeps K/V of its own, in a paged pool shaped like the target's and
addressed through the *target's* block tables: position p of a sequence lives in
the same slot of both pools, so the scheduler's block manager (allocation,
preemption, freeing) serves both and the draft needs no bookkeeping of memory.

Per sequence the draft only tracks how many leading positions of its pool hold
valid K/V (`computed`). A step, driven by `BatchEngine`:

1. `reservations`: placeholder drafts, so `schedule` gives each decoding sequence
   slots for its k drafts (the draft writes K/V there while drafting).
2. `propose`: one batched forward feeds each drafting sequence what the draft has
   not seen yet (1 or 2 tokens in steady decode, the whole prompt once when a
   sequence starts decoding, in chunks of at most `catch_up_tokens`) and samples
   the first draft; k - 1 more single-token forwards sample the rest.
3. `commit`: after verification keep what matches the sequence (positions before
   the first rejected draft); the rest is overwritten later, as in the target.

A sequence whose blocks change under it (preemption) starts over at 0. Prefix-cache
hits are never trusted on the draft side: a new sequence recomputes its prompt in
the draft, which at worst rewrites a shared block with the same tokens' K/V. None of
this can change what is output: verification decides every token (draft_verifier.py);
a stale draft K/V could only lower the acceptance rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from engine.batch.decode_graphs import GraphPlan, single_decodes
from engine.batch.paged_cache import Chunk, PagedKVCache, build_chunk_batch
from engine.batch.scheduler_io import ScheduledSeq
from engine.batch.sequence import Sequence
from engine.model.loader import LoadedModel
from engine.sampling import SamplingParams, adjusted_logits, argmax_ids, draw, token_probs


@dataclass(slots=True)
class DraftProposal:
    """k drafted tokens and, for a sampled request, the (k, vocab) distributions they were drawn from."""

    token_ids: list[int]
    probs: torch.Tensor | None


@dataclass(slots=True)
class _Drafting:
    """One sequence's drafting within a step."""

    seq: Sequence
    k: int
    tokens: list[int]
    probs: list[torch.Tensor]


class DraftModelDrafter:
    """Proposes drafts with a second copy of the model and keeps its K/V in step with the sequences."""

    def __init__(
        self,
        draft: LoadedModel,
        num_speculative_tokens: int,
        num_blocks: int,
        block_size: int,
        catch_up_tokens: int,
        graphs: GraphPlan | None = None,
    ) -> None:
        """`graphs`: replay the k - 1 one-token drafting forwards from CUDA graphs over the draft's own pool
        (batch/decode_graphs.py), as the target's decode-only steps are."""
        if num_speculative_tokens < 1:
            raise ValueError(f"num_speculative_tokens must be >= 1, got {num_speculative_tokens}")
        if catch_up_tokens < 1:
            raise ValueError(f"catch_up_tokens must be >= 1, got {catch_up_tokens}")
        self.draft = draft
        self.num_speculative_tokens = num_speculative_tokens
        self.catch_up_tokens = catch_up_tokens
        self.cache = PagedKVCache(
            draft.config, num_blocks, block_size, draft.model.act_dtype, draft.device, scratch_block=graphs is not None
        )
        self.graphs = graphs.build(draft.model, self.cache) if graphs is not None else None
        self._computed: dict[int, int] = {}  # seq_id -> leading positions with valid draft K/V
        self._fed: dict[int, int] = {}  # seq_id -> positions fed by this step's propose (not yet committed)

    @staticmethod
    def bytes_per_block(draft: LoadedModel, block_size: int) -> int:
        return PagedKVCache.bytes_per_block(draft.config, block_size, draft.model.act_dtype)

    def reservations(self, running: list[Sequence]) -> dict[int, tuple[int, ...]]:
        """Placeholder drafts (the scheduler counts them; `propose` fills them) for the decoding sequences.

        None for a sequence the draft is more than `catch_up_tokens` behind: it decodes
        plainly while the draft catches up, so no step feeds the draft a whole long prompt.
        """
        reserved = {}
        for seq in running:
            if not seq.is_decoding:
                continue
            room = min(self.num_speculative_tokens, seq.params.max_tokens - seq.num_output_tokens - 1)
            if room > 0 and seq.num_tokens - self._computed.get(seq.seq_id, 0) <= self.catch_up_tokens:
                reserved[seq.seq_id] = (seq.last_token_id,) * room
        return reserved

    def propose(
        self, decodes: list[ScheduledSeq], generators: Mapping[int, torch.Generator]
    ) -> dict[int, DraftProposal]:
        """Draft the reserved positions of this step's decodes; catch up the ones far behind."""
        chunks: list[Chunk] = []
        drafting: list[_Drafting] = []
        last_rows: list[int] = []
        rows = 0
        for item in decodes:
            seq, k = item.seq, len(item.draft_token_ids)
            done, known = self._computed.get(seq.seq_id, 0), seq.num_tokens
            if k == 0 and known - done <= self.catch_up_tokens:
                continue  # nothing to draft, and the next drafting step can catch up at once
            end = known if k else min(known, done + self.catch_up_tokens)
            chunks.append(Chunk(seq.block_table, done, seq.token_slice(done, end)))
            rows += end - done
            self._fed[seq.seq_id] = end
            if k:
                drafting.append(_Drafting(seq, k, [], []))
                last_rows.append(rows - 1)
        if not chunks:
            return {}
        logits = self._forward(chunks, last_rows)
        for step in range(max((d.k for d in drafting), default=0)):
            active = [d for d in drafting if d.k > step]
            if step > 0:
                chunks = [Chunk(d.seq.block_table, d.seq.num_tokens + step - 1, [d.tokens[-1]]) for d in active]
                logits = self._forward(chunks, list(range(len(active))))
                for d in active:
                    self._fed[d.seq.seq_id] = d.seq.num_tokens + step
            for d, row in zip(active, logits, strict=True):
                self._sample(d, row, generators.get(d.seq.seq_id))
        return {d.seq.seq_id: DraftProposal(d.tokens, torch.stack(d.probs) if d.probs else None) for d in drafting}

    def _forward(self, chunks: list[Chunk], rows: list[int]) -> torch.Tensor:
        model, device = self.draft.model, self.draft.device
        picked = torch.tensor(rows, dtype=torch.long, device=device)
        with torch.inference_mode():
            if self.graphs is not None and single_decodes(chunks):
                return self.graphs.run(chunks)[picked]  # one row per chunk
            batch = build_chunk_batch(chunks, self.cache, device)
            hidden = model.forward_flat(batch.ids, batch.positions, batch)
            return model.logits(hidden[picked])

    @staticmethod
    def _sample(d: _Drafting, row: torch.Tensor, generator: torch.Generator | None) -> None:
        """The next draft token, chosen as the request's sampler would choose it from the draft's logits."""
        params: SamplingParams = d.seq.params
        seen = d.seq.all_token_ids + d.tokens if params.repetition_penalty != 1.0 else ()
        if params.greedy:
            d.tokens.append(argmax_ids(adjusted_logits(row, params, seen)[None])[0])
            return
        probs = token_probs(row, params, seen)
        d.probs.append(probs)
        d.tokens.append(draw(probs, generator))

    def commit(self, seq_id: int, known_before: int, num_accepted: int) -> None:
        """After verification: draft K/V stay valid up to the first rejected draft (or all that was fed)."""
        fed = self._fed.pop(seq_id, None)
        if fed is not None:
            self._computed[seq_id] = min(fed, known_before + num_accepted)

    def forget(self, seq_id: int) -> None:
        """The sequence ended or lost its blocks (preemption): its draft K/V are gone."""
        self._computed.pop(seq_id, None)
        self._fed.pop(seq_id, None)

    @property
    def nbytes(self) -> int:
        return self.cache.nbytes
