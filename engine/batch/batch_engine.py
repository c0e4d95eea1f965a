"""Continuous batching over the paged KV cache: `step()` is the core API.

One call runs one scheduler step: draft (optional speculation: n-gram lookup, or
the model itself in a cheaper format), schedule, one model forward over every
scheduled token of every sequence, sample or verify drafts, and hand the tokens
back to the scheduler. The server's loop and tests call it;
it owns no thread and no I/O, so it is driven the same way everywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from engine.batch.decode_graphs import DecodeGraphs, GraphPlan, cuda_graphs_enabled, single_decodes
from engine.batch.draft_model import DraftModelDrafter, DraftProposal
from engine.batch.draft_verifier import verify_drafts
from engine.batch.ngram_drafter import NgramDrafter
from engine.batch.paged_cache import PagedKVCache, build_batch, chunks_of
from engine.batch.scheduler import Scheduler, SchedulerConfig
from engine.batch.scheduler_io import ScheduledSeq
from engine.batch.sequence import Sequence
from engine.model.loader import LoadedModel
from engine.sampling import SamplingParams, make_generator, sample_token


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """Serving limits; KV memory is given in bytes and turned into blocks here."""

    max_num_seqs: int = 16
    max_model_len: int = 2048
    max_num_batched_tokens: int = 512
    prefill_chunk_size: int = 256
    max_queue: int = 64
    block_size: int = 16
    kv_cache_bytes: int = 256 * 1024 * 1024
    speculative_tokens: int = 0  # drafts per step: n-gram lookup, or the draft model when one is given; 0: off
    # Decode-only steps from CUDA graphs (batch/decode_graphs.py). "auto": on a CUDA device unless
    # PREFLIGHT_CUDA_GRAPHS=0; "off": eager; "uncaptured": the graphs' padded step run eagerly on any
    # device (how CI checks the padding without a GPU).
    decode_graphs: Literal["auto", "off", "uncaptured"] = "auto"

    def bytes_per_block(self, loaded: LoadedModel, draft: LoadedModel | None = None) -> int:
        """One block of the target's pool, plus the draft's mirror block when a draft model runs."""
        per_block = PagedKVCache.bytes_per_block(loaded.config, self.block_size, loaded.model.act_dtype)
        return per_block + (DraftModelDrafter.bytes_per_block(draft, self.block_size) if draft is not None else 0)

    def num_blocks(self, loaded: LoadedModel, draft: LoadedModel | None = None) -> int:
        """Blocks that fit `kv_cache_bytes`; with a draft model the budget holds both pools."""
        return max(1, self.kv_cache_bytes // self.bytes_per_block(loaded, draft))


@dataclass(slots=True)
class TokenOutput:
    """What one sequence produced in a step."""

    seq_id: int
    new_token_ids: list[int]
    logprobs: list[float] | None
    finished: bool
    finish_reason: str | None
    # On a sequence's first output only: its prompt tokens the prefix cache served (not computed), for `usage`.
    cached_prompt_tokens: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KvStats:
    """The scheduler's and KV pool's state after a step, for /metrics; rates are None until measured."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float  # fraction of the KV blocks in use
    num_free_blocks: int
    prefix_cache_hit_rate: float | None
    num_preemptions: int
    spec_acceptance_rate: float | None
    kv_cache_bytes: int


@dataclass(slots=True)
class StepResult:
    outputs: list[TokenOutput] = field(default_factory=list)
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0  # tokens of decoding sequences, drafts included
    num_decode_seqs: int = 0  # decoding sequences (without speculation, as many as their tokens)
    num_preempted: int = 0
    forward_s: float = 0.0
    draft_s: float = 0.0  # the draft model's forwards (draft-model speculation only)
    started_s: float = 0.0  # time.monotonic() when the step began (0: nothing was scheduled)
    step_s: float = 0.0  # the whole step: scheduling, drafting, forward, sampling, bookkeeping


class BatchEngine:
    """Many sequences sharing one model and one paged KV pool (the server's engine).

    `engine.run.runtime.Engine` is the single-stream one; `BatchLoop` (batch/loop.py)
    drives this one from its own thread. With `draft` (the same model file in another
    weight format) and `speculative_tokens` > 0, the draft model proposes the drafts
    and sampled requests are sped up too; without it, n-gram lookup drafts for greedy ones.
    """

    def __init__(
        self, loaded: LoadedModel, config: BatchConfig | None = None, draft: LoadedModel | None = None
    ) -> None:
        self.loaded = loaded
        self.config = cfg = config or BatchConfig()
        if draft is not None:
            _check_draft(loaded, draft, cfg)
        model_len = min(cfg.max_model_len, loaded.config.context_length)
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=cfg.max_num_seqs,
                max_num_batched_tokens=cfg.max_num_batched_tokens,
                prefill_chunk_size=cfg.prefill_chunk_size,
                max_queue=cfg.max_queue,
                max_model_len=model_len,
                block_size=cfg.block_size,
                num_kv_blocks=cfg.num_blocks(loaded, draft),
                stop_token_ids=loaded.tokenizer.stop_token_ids,
            )
        )
        sc = self.scheduler.config
        graphed = cfg.decode_graphs == "uncaptured" or (
            cfg.decode_graphs == "auto" and loaded.device.type == "cuda" and cuda_graphs_enabled()
        )
        plan = GraphPlan(sc.max_num_seqs, model_len, capture=cfg.decode_graphs == "auto") if graphed else None
        self.cache = PagedKVCache(
            loaded.config, sc.num_kv_blocks, sc.block_size, loaded.model.act_dtype, loaded.device, scratch_block=graphed
        )
        self.graphs = plan.build(loaded.model, self.cache) if plan is not None else None
        self.drafter = NgramDrafter(cfg.speculative_tokens) if cfg.speculative_tokens > 0 and draft is None else None
        self.draft_model = (
            DraftModelDrafter(
                draft, cfg.speculative_tokens, sc.num_kv_blocks, sc.block_size, sc.prefill_chunk_size, graphs=plan
            )
            if draft is not None
            else None
        )
        self._next_id = 0
        self._rngs: dict[int, torch.Generator] = {}

    @property
    def max_model_len(self) -> int:
        return self.scheduler.config.max_model_len

    @property
    def decode_graphs(self) -> list[DecodeGraphs]:
        """Every set of decode graphs this engine replays: the target's, and a draft model's own."""
        draft = self.draft_model.graphs if self.draft_model is not None else None
        return [g for g in (self.graphs, draft) if g is not None]

    def drop_graphs(self) -> None:
        """Decode eagerly from now on, the draft model too (a capture failed: slower, never wrong)."""
        self.graphs = None
        if self.draft_model is not None:
            self.draft_model.graphs = None

    def add_request(self, prompt_ids: list[int], params: SamplingParams) -> int:
        """Queue a request; QueueFullError / PromptError come from the scheduler."""
        seq_id = self._next_id
        self._next_id += 1
        self.scheduler.add(Sequence(seq_id, list(prompt_ids), params, time.monotonic()))
        self._rngs[seq_id] = make_generator(params.seed, self.loaded.device)
        return seq_id

    def abort(self, seq_id: int) -> None:
        """Stop a sequence and free its KV blocks now (a client went away)."""
        self.scheduler.abort(seq_id)
        self._forget(seq_id)

    def finish(self, seq_id: int) -> None:
        """End a sequence that matched a stop string (the caller detokenizes)."""
        self.scheduler.finish(seq_id)
        self._forget(seq_id)

    def _forget(self, seq_id: int) -> None:
        self._rngs.pop(seq_id, None)
        if self.draft_model is not None:
            self.draft_model.forget(seq_id)

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    def _drafts(self) -> dict[int, tuple[int, ...]] | dict[int, list[int]] | None:
        """Drafts for the scheduler: a draft model's reservations, or prompt-lookup drafts for greedy sequences."""
        if self.draft_model is not None:
            return self.draft_model.reservations(self.scheduler.running)
        if self.drafter is None:
            return None
        drafts = {}
        for seq in self.scheduler.running:
            if seq.is_decoding and seq.params.greedy:
                room = seq.params.max_tokens - seq.num_output_tokens - 1
                proposal = self.drafter.propose(seq.all_token_ids, max_tokens=max(room, 0))
                if proposal:
                    drafts[seq.seq_id] = proposal
        return drafts

    def step(self) -> StepResult:
        """Run one scheduler step; returns per-sequence new tokens and what finished."""
        started, t_start = time.monotonic(), time.perf_counter()
        out = self.scheduler.schedule(self._drafts())
        result = StepResult(num_preempted=len(out.preempted))
        if self.draft_model is not None:
            for seq in out.preempted:  # its blocks are gone, and its draft K/V with them
                self.draft_model.forget(seq.seq_id)
        if out.is_empty:
            return result
        proposals: dict[int, DraftProposal] = {}
        if self.draft_model is not None:
            t_draft = time.perf_counter()
            proposals = self.draft_model.propose(out.decodes, self._rngs)
            out.fill_drafts({seq_id: p.token_ids for seq_id, p in proposals.items()})
            result.draft_s = time.perf_counter() - t_draft
        result.num_prefill_tokens, result.num_decode_tokens = out.num_prefill_tokens, out.num_decode_tokens
        result.num_decode_seqs = len(out.decodes)
        t0 = time.perf_counter()
        rows, owners = _sample_rows(out.items)
        decodes = chunks_of(out.decodes) if self.graphs is not None and not out.prefills else []
        with torch.inference_mode():
            if self.graphs is not None and single_decodes(decodes):
                logits = self.graphs.run(decodes)  # every decode samples: row i is decodes[i]
            else:
                batch = build_batch(out, self.cache, self.loaded.device)
                model = self.loaded.model
                hidden = model.forward_flat(batch.ids, batch.positions, batch)
                logits = model.logits(hidden[torch.tensor(rows, dtype=torch.long)]) if rows else None
        result.forward_s = time.perf_counter() - t0
        sampled: dict[int, list[int]] = {}
        logprobs: dict[int, list[float]] = {}
        for item, (first, count) in owners.items():
            seq_id = item.seq.seq_id
            sampled[seq_id], logprobs[seq_id] = self._pick(item, logits[first : first + count], proposals.get(seq_id))
        before = {item.seq.seq_id: item.seq.num_output_tokens for item in owners}
        finished = {s.seq_id: s for s in self.scheduler.postprocess(out, sampled)}
        for item in owners:
            seq = item.seq
            new = seq.output_token_ids[before[seq.seq_id] :]
            lps = logprobs[seq.seq_id][: len(new)] if seq.params.logprobs else None
            done = seq.seq_id in finished
            cached = seq.num_cached_prefix_tokens if before[seq.seq_id] == 0 else None
            result.outputs.append(TokenOutput(seq.seq_id, new, lps, done, seq.finish_reason if done else None, cached))
            if done:
                self._forget(seq.seq_id)
            elif self.draft_model is not None:
                known_before = item.start + item.num_tokens - len(item.draft_token_ids)
                self.draft_model.commit(seq.seq_id, known_before, len(sampled[seq.seq_id]) - 1)
        result.started_s, result.step_s = started, time.perf_counter() - t_start
        return result

    def _pick(
        self, item: ScheduledSeq, rows: torch.Tensor, proposal: DraftProposal | None
    ) -> tuple[list[int], list[float]]:
        """Sample one token, or verify drafts (accepted prefix + one token from the target; draft_verifier.py)."""
        seq, params = item.seq, item.seq.params
        if item.draft_token_ids:
            probs = proposal.probs if proposal is not None else None
            rng = self._rngs.get(seq.seq_id)
            tokens = verify_drafts(rows, item.draft_token_ids, probs, params, seq.all_token_ids, rng)
            if not params.logprobs:
                return tokens, []
            lps = torch.log_softmax(rows[: len(tokens)], -1)
            return tokens, [float(lps[i, t]) for i, t in enumerate(tokens)]
        token, lp = sample_token(rows[-1], params, self._rngs.get(seq.seq_id), seq.all_token_ids)
        return [token], [lp] if lp is not None else []

    def kv_stats(self) -> KvStats:
        s = self.scheduler.stats()
        return KvStats(
            num_running=s.num_running,
            num_waiting=s.num_waiting,
            kv_cache_usage=s.kv_cache_usage,
            num_free_blocks=s.num_free_blocks,
            prefix_cache_hit_rate=s.prefix_cache_hit_rate,
            num_preemptions=s.num_preemptions,
            spec_acceptance_rate=s.spec_acceptance_rate,
            kv_cache_bytes=self.cache.nbytes + (self.draft_model.nbytes if self.draft_model is not None else 0),
        )


def _check_draft(loaded: LoadedModel, draft: LoadedModel, config: BatchConfig) -> None:
    """A draft model must be the served file in some format (same tokens, same K/V shape) on the same device."""
    if config.speculative_tokens < 1:
        raise ValueError("a draft model needs speculative_tokens >= 1 (drafts per step)")
    if draft.gguf_path != loaded.gguf_path or draft.config != loaded.config:
        raise ValueError(
            f"the draft model must be the served model file in another weight format; got {draft.gguf_path} "
            f"for a target loaded from {loaded.gguf_path}"
        )
    if draft.device != loaded.device:
        raise ValueError(f"the draft model is on {draft.device}, the target on {loaded.device}: load both on one")


def _sample_rows(items: list[ScheduledSeq]) -> tuple[list[int], dict[ScheduledSeq, tuple[int, int]]]:
    """Rows of the flattened step whose logits are needed, and which item owns which slice.

    A plain item needs its last row; a speculative one its last 1 + k rows
    (the last known token and every draft position).
    """
    rows: list[int] = []
    owners: dict[ScheduledSeq, tuple[int, int]] = {}
    offset = 0
    for item in items:
        end = offset + item.num_tokens
        if item.samples:
            count = 1 + len(item.draft_token_ids)
            owners[item] = (len(rows), count)
            rows.extend(range(end - count, end))
        offset = end
    return rows, owners
