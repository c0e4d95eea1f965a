"""Continuous batching: which sequences run in the next model step, and how many tokens each.

Plain Python over `Sequence` objects (STYLE.md §5), so it is tested with a
fake sampler instead of a model. One step, as the engine loop drives it:

    out = scheduler.schedule(drafts)           # who runs, how many tokens each
    picks = model_side.run(out)                # forward + sampling (not here)
    finished = scheduler.postprocess(out, picks)

Policy, in order of what matters for a streaming server:

1. **Decodes first.** Every running sequence that is decoding gets its next
   token (plus any speculative drafts that fit), so streams keep flowing
   while long prompts arrive.
2. **Chunked prefill fills the rest** of the per-step token budget:
   partially prefilled sequences continue, then waiting ones are admitted
   FCFS, each chunk capped at `prefill_chunk_size`.
3. **Out of blocks means preemption, never a crash.** The most recently
   arrived running sequence gives up its blocks and goes back to the front
   of the waiting queue to be recomputed (its own blocks often still hit the
   prefix cache then).

Not thread-safe: one scheduler thread owns it and the model; other threads
hand it adds and aborts through a queue.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

from engine.batch.block_manager import BlockManager
from engine.batch.ngram_drafter import SpecDecodeStats
from engine.batch.scheduler_io import ScheduledSeq, SchedulerConfig, SchedulerOutput, SchedulerStats
from engine.batch.sequence import Sequence, SequenceStatus
from engine.errors import EngineError, PromptError

__all__ = [
    "QueueFullError",
    "ScheduledSeq",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "SchedulerStats",
]


class QueueFullError(EngineError):
    """The waiting queue is at `max_queue`: the server answers 503 (backpressure)."""


@dataclass(slots=True)
class _StepBuilder:
    """Accumulates one step's decisions while `schedule` walks the queues."""

    budget: int
    out: SchedulerOutput = field(default_factory=SchedulerOutput)
    scheduled_ids: set[int] = field(default_factory=set)


class Scheduler:
    """Owns the waiting queue, the running set and the block manager."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.block_manager = BlockManager(config.num_kv_blocks, config.block_size)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # kept in arrival order; preemption takes from the end
        self._live: dict[int, Sequence] = {}
        self.num_preemptions = 0
        self.spec_stats = SpecDecodeStats()

    # ---- requests in and out ------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        """Queue a new request. Raises QueueFullError (503) or PromptError (400) instead of queueing."""
        cfg = self.config
        if seq.seq_id in self._live:
            raise ValueError(f"sequence id {seq.seq_id} is already live")
        if seq.num_tokens >= cfg.max_model_len:
            raise PromptError(
                f"prompt has {seq.num_tokens} tokens; max_model_len is {cfg.max_model_len}, "
                "so it must be shorter to leave room for output"
            )
        if len(self.waiting) >= cfg.max_queue:
            raise QueueFullError(f"waiting queue is full ({cfg.max_queue} requests): retry later")
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)
        self._live[seq.seq_id] = seq

    def abort(self, seq_id: int) -> Sequence | None:
        """Client went away: free its blocks now. Returns the sequence, or None if not live."""
        return self.finish(seq_id, SequenceStatus.FINISHED_ABORTED)

    def finish(self, seq_id: int, status: SequenceStatus = SequenceStatus.FINISHED_STOPPED) -> Sequence | None:
        """End a sequence from outside (e.g. the detokenizer matched a stop string)."""
        if not status.is_finished:
            raise ValueError(f"finish needs a FINISHED_* status, got {status.name}")
        seq = self._live.get(seq_id)
        if seq is None:
            return None
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self._retire(seq, status)
        return seq

    def _retire(self, seq: Sequence, status: SequenceStatus) -> None:
        self.block_manager.free(seq)
        seq.status = status
        del self._live[seq.seq_id]

    @property
    def has_unfinished(self) -> bool:
        return bool(self._live)

    # ---- one step -----------------------------------------------------------------------

    def schedule(self, drafts: Mapping[int, Seq[int]] | None = None) -> SchedulerOutput:
        """Decide the next step. `drafts` maps seq_id to proposed draft tokens for decoding sequences.

        Only their number matters here: a draft model passes placeholders and fills the
        positions it was given after this returns (`SchedulerOutput.fill_drafts`).
        """
        step = _StepBuilder(budget=self.config.max_num_batched_tokens)
        decoding = [s for s in self.running if s.is_decoding]
        for i, seq in enumerate(decoding):
            if seq.status is SequenceStatus.RUNNING:  # not preempted earlier in this loop
                reserve = len(decoding) - i - 1  # one token kept for each decode still to come
                self._schedule_decode(step, seq, (drafts or {}).get(seq.seq_id, ()), reserve)
        for seq in list(self.running):
            if step.budget <= 0:
                break
            if seq.status is SequenceStatus.RUNNING and seq.seq_id not in step.scheduled_ids:
                self._schedule_prefill_chunk(step, seq)
        while self.waiting and step.budget > 0 and len(self.running) < self.config.max_num_seqs:
            if not self._admit(step, self.waiting[0]):
                break  # FCFS: a request that does not fit blocks the ones behind it
        return step.out

    def _schedule_decode(self, step: _StepBuilder, seq: Sequence, draft: Seq[int], reserve: int) -> None:
        cfg = self.config
        # Drafts may not run past max_tokens, the context, or the step's token budget
        # (a last accepted draft may be the final token: the bonus pick is then dropped).
        room = min(
            seq.params.max_tokens - seq.num_output_tokens,
            cfg.max_model_len - seq.num_tokens,
            step.budget - 1 - reserve,
        )
        draft = tuple(draft[: max(0, room)])
        while not self.block_manager.can_append(seq, 1 + len(draft)):
            if draft:
                draft = ()  # give up speculation before taking anyone's blocks
                continue
            victim = self._preempt_victim(step)
            self._preempt(victim, step.out)
            if victim is seq:
                return
        self.block_manager.append_slots(seq, 1 + len(draft))
        self._record(step, ScheduledSeq(seq, seq.num_computed_tokens, 1 + len(draft), draft))

    def _schedule_prefill_chunk(self, step: _StepBuilder, seq: Sequence) -> None:
        """Continue a partially prefilled (or recomputing) running sequence."""
        n = min(seq.num_uncomputed_tokens, step.budget, self.config.prefill_chunk_size)
        while (fit := min(n, self.block_manager.num_allocatable_tokens(seq))) == 0:
            victim = self._preempt_victim(step)
            self._preempt(victim, step.out)
            if victim is seq:
                return
        self.block_manager.allocate(seq, fit)
        self._record(step, ScheduledSeq(seq, seq.num_computed_tokens, fit))

    def _admit(self, step: _StepBuilder, seq: Sequence) -> bool:
        """Move the head of the waiting queue into the running set with its first chunk."""
        bm = self.block_manager
        hit = bm.num_prefix_hit_tokens(seq)
        n = min(seq.num_tokens - hit, step.budget, self.config.prefill_chunk_size)
        if not bm.can_allocate(seq, n):
            return False
        self.waiting.popleft()
        bm.allocate(seq, n)
        seq.status = SequenceStatus.RUNNING
        keys = [(s.arrival_s, s.seq_id) for s in self.running]
        self.running.insert(bisect.bisect(keys, (seq.arrival_s, seq.seq_id)), seq)
        self._record(step, ScheduledSeq(seq, seq.num_computed_tokens, n))
        return True

    def _record(self, step: _StepBuilder, item: ScheduledSeq) -> None:
        (step.out.decodes if item.seq.is_decoding else step.out.prefills).append(item)
        step.scheduled_ids.add(item.seq.seq_id)
        step.budget -= item.num_tokens

    def _preempt_victim(self, step: _StepBuilder) -> Sequence:
        """The most recently arrived running sequence not already given work this step."""
        for seq in reversed(self.running):
            if seq.seq_id not in step.scheduled_ids:
                return seq
        raise RuntimeError("no preemptable sequence: the KV pool is smaller than one step's needs")

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
        out.preempted.append(seq)

    # ---- after the model ----------------------------------------------------------------

    def postprocess(self, output: SchedulerOutput, sampled: Mapping[int, Seq[int]]) -> list[Sequence]:
        """Apply one step's results; return the sequences that finished in it (blocks already freed).

        `sampled[seq_id]` lists the tokens to append for every item whose
        `samples` is true: one token, or for a speculative decode the accepted
        drafts plus the target's next token (see `ngram_drafter.accept_drafts`).
        Sequences aborted or finished since `schedule` are skipped.
        """
        finished: list[Sequence] = []
        for item in output.items:
            seq = item.seq
            if seq.status is not SequenceStatus.RUNNING:
                continue
            tokens = sampled.get(seq.seq_id)
            if not item.samples:
                if tokens:
                    raise ValueError(f"sequence {seq.seq_id} ran a mid-prompt chunk; it has no token to sample")
                seq.num_computed_tokens += item.num_tokens
            else:
                if not tokens or len(tokens) > 1 + len(item.draft_token_ids):
                    raise ValueError(
                        f"sequence {seq.seq_id} needs 1..{1 + len(item.draft_token_ids)} sampled tokens, "
                        f"got {0 if tokens is None else len(tokens)}"
                    )
                if item.draft_token_ids:
                    accepted = min(len(tokens) - 1, len(item.draft_token_ids))
                    self.spec_stats.record(len(item.draft_token_ids), accepted)
                status = self._append_tokens(seq, tokens)
                # K/V are valid for the fed tokens that are now part of the sequence;
                # the newest token is never computed yet.
                seq.num_computed_tokens = min(item.start + item.num_tokens, seq.num_tokens - 1)
                if status is not None:
                    self.block_manager.commit(seq)  # its full blocks stay hittable (e.g. the next chat turn)
                    self.running.remove(seq)
                    self._retire(seq, status)
                    finished.append(seq)
                    continue
            self.block_manager.commit(seq)
        return finished

    def _append_tokens(self, seq: Sequence, tokens: Seq[int]) -> SequenceStatus | None:
        """Append tokens up to the first finishing one; return the finish status, if any."""
        stop_ids = () if seq.params.ignore_eos else self.config.stop_token_ids
        for token in tokens:
            if token in stop_ids:
                return SequenceStatus.FINISHED_STOPPED  # like Engine.stream: the stop token is not output
            seq.append_token(token)
            if seq.num_output_tokens >= seq.params.max_tokens or seq.num_tokens >= self.config.max_model_len:
                return SequenceStatus.FINISHED_LENGTH
        return None

    # ---- metrics ------------------------------------------------------------------------

    def stats(self) -> SchedulerStats:
        bm = self.block_manager
        return SchedulerStats(
            num_running=len(self.running),
            num_waiting=len(self.waiting),
            kv_cache_usage=bm.usage,
            num_free_blocks=bm.num_free_blocks,
            prefix_cache_hit_rate=bm.prefix_cache_hit_rate,
            num_preemptions=self.num_preemptions,
            spec_acceptance_rate=self.spec_stats.acceptance_rate,
        )
