"""Scheduler without a model: a fake sampler feeds deterministic tokens through schedule/postprocess."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from engine.batch.ngram_drafter import NgramDrafter, accept_drafts
from engine.batch.scheduler import QueueFullError, Scheduler, SchedulerConfig, SchedulerOutput
from engine.batch.sequence import Sequence, SequenceStatus
from engine.errors import PromptError
from engine.sampling import SamplingParams

EOS = 2


def make(**overrides: object) -> Scheduler:
    cfg = {
        "max_num_batched_tokens": 64,
        "prefill_chunk_size": 64,
        "max_model_len": 128,
        "block_size": 4,
        "num_kv_blocks": 64,
        "stop_token_ids": frozenset({EOS}),
    }
    cfg.update(overrides)
    return Scheduler(SchedulerConfig(**cfg))  # type: ignore[arg-type]


def new_seq(seq_id: int, prompt_len: int = 5, max_tokens: int = 4, **params: object) -> Sequence:
    prompt = [1000 * seq_id + i for i in range(prompt_len)]
    return Sequence(seq_id, prompt, SamplingParams(max_tokens=max_tokens, **params), arrival_s=float(seq_id))


def token_for(seq: Sequence) -> int:
    """The fake model's next token: depends only on the sequence and its length, so recompute is harmless."""
    return 10 + seq.seq_id * 100 + seq.num_output_tokens


def sample(out: SchedulerOutput, pick: Callable[[Sequence], int] = token_for) -> dict[int, list[int]]:
    return {i.seq.seq_id: [pick(i.seq)] for i in out.items if i.samples}


def drive(sched: Scheduler, max_steps: int = 500) -> tuple[list[Sequence], list[SchedulerOutput]]:
    """Run steps until nothing is live, checking budgets and block invariants after every one."""
    finished: list[Sequence] = []
    outputs: list[SchedulerOutput] = []
    for _ in range(max_steps):
        if not sched.has_unfinished:
            return finished, outputs
        out = sched.schedule()
        assert not out.is_empty, "a live scheduler must make progress"
        assert out.num_decode_tokens + out.num_prefill_tokens <= sched.config.max_num_batched_tokens
        assert len(sched.running) <= sched.config.max_num_seqs
        sched.block_manager.verify(sched.running)
        outputs.append(out)
        finished += sched.postprocess(out, sample(out))
        sched.block_manager.verify(sched.running)
    raise AssertionError(f"not finished after {max_steps} steps")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"max_queue": 0}, "max_queue"),
        ({"max_num_seqs": 16, "max_num_batched_tokens": 8}, "every running sequence"),
        ({"num_kv_blocks": 4, "block_size": 4, "max_model_len": 32}, "lower max_model_len"),
        ({"max_model_len": 1}, "at least 2"),
    ],
)
def test_config_rejects_limits_that_cannot_work(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(**overrides)


def test_add_refuses_instead_of_queueing() -> None:
    sched = make(max_queue=2, max_model_len=16)
    sched.add(new_seq(1))
    with pytest.raises(ValueError, match="already live"):
        sched.add(new_seq(1))
    with pytest.raises(PromptError, match="max_model_len is 16"):
        sched.add(new_seq(2, prompt_len=16))
    sched.add(new_seq(3))
    with pytest.raises(QueueFullError, match="2 requests"):
        sched.add(new_seq(4))
    assert sched.stats().num_waiting == 2


def test_all_finish_with_exact_outputs() -> None:
    sched = make()
    seqs = [new_seq(i, prompt_len=3 + i, max_tokens=5) for i in range(1, 4)]
    for s in seqs:
        sched.add(s)
    finished, _ = drive(sched)
    assert sorted(s.seq_id for s in finished) == [1, 2, 3]
    for s in seqs:
        assert s.output_token_ids == [10 + s.seq_id * 100 + j for j in range(5)]
        assert s.finish_reason == "length" and s.block_table == []
    assert sched.block_manager.num_free_blocks == sched.config.num_kv_blocks


def test_decodes_are_scheduled_before_new_prefill() -> None:
    sched = make(max_num_batched_tokens=16, prefill_chunk_size=16)
    a = new_seq(1, prompt_len=4, max_tokens=10)
    sched.add(a)
    sched.postprocess(out := sched.schedule(), sample(out))  # a prefilled, first token out
    sched.add(new_seq(2, prompt_len=40))
    out = sched.schedule()
    assert [(i.seq.seq_id, i.start, i.num_tokens) for i in out.decodes] == [(1, 4, 1)]
    assert [(i.seq.seq_id, i.start, i.num_tokens) for i in out.prefills] == [(2, 0, 15)]
    assert out.items[0].seq is a and out.decodes[0].token_ids == [a.output_token_ids[-1]]


@pytest.mark.parametrize(
    ("budget", "chunk", "expected"),
    [
        (32, 32, [(0, 32), (32, 32), (64, 32), (96, 4)]),
        (64, 48, [(0, 48), (48, 48), (96, 4)]),
        (200, 256, [(0, 100)]),
    ],
)
def test_chunked_prefill_splits_a_long_prompt(budget: int, chunk: int, expected: list[tuple[int, int]]) -> None:
    sched = make(max_num_batched_tokens=budget, prefill_chunk_size=chunk, max_model_len=128, num_kv_blocks=64)
    s = new_seq(1, prompt_len=100, max_tokens=1)
    sched.add(s)
    chunks = []
    while s.num_output_tokens == 0:
        out = sched.schedule()
        (item,) = out.prefills
        chunks.append((item.start, item.num_tokens))
        assert item.samples == (item.start + item.num_tokens == 100)
        assert item.token_ids == s.prompt_token_ids[item.start : item.start + item.num_tokens]
        sched.postprocess(out, sample(out))
    assert chunks == expected
    assert s.is_finished


def test_mid_prompt_chunk_rejects_a_sampled_token() -> None:
    sched = make(max_num_batched_tokens=16, prefill_chunk_size=8)
    sched.add(new_seq(1, prompt_len=20))
    out = sched.schedule()
    with pytest.raises(ValueError, match="mid-prompt chunk"):
        sched.postprocess(out, {1: [5]})


def test_missing_sampled_token_is_an_error() -> None:
    sched = make()
    sched.add(new_seq(1))
    with pytest.raises(ValueError, match="needs 1..1 sampled tokens"):
        sched.postprocess(sched.schedule(), {})


def test_max_num_seqs_is_respected() -> None:
    sched = make(max_num_seqs=2)
    for i in range(1, 6):
        sched.add(new_seq(i, max_tokens=3))
    finished, outputs = drive(sched)
    assert len(finished) == 5
    assert max(len(o.items) for o in outputs) == 2


def test_tiny_pool_preempts_and_everyone_still_finishes() -> None:
    sched = make(num_kv_blocks=6, block_size=4, max_model_len=24, max_num_batched_tokens=16)
    seqs = [new_seq(i, prompt_len=4 + i, max_tokens=12) for i in range(1, 4)]
    for s in seqs:
        sched.add(s)
    finished: list[Sequence] = []
    for _ in range(200):
        if not sched.has_unfinished:
            break
        before = list(sched.running)
        out = sched.schedule()
        if out.preempted:
            # The victim is the latest arrival among the running sequences that got no work this step.
            idle = [s for s in before if all(i.seq is not s for i in out.items)]
            assert out.preempted[0] is max(idle, key=lambda s: s.arrival_s)
            assert all(p.status is SequenceStatus.WAITING and p.block_table == [] for p in out.preempted)
        sched.block_manager.verify(sched.running)
        finished += sched.postprocess(out, sample(out))
    assert sched.num_preemptions > 0
    assert sorted(s.seq_id for s in finished) == [1, 2, 3]
    for s in seqs:
        assert s.output_token_ids == [10 + s.seq_id * 100 + j for j in range(12)]
    assert sched.block_manager.num_used_blocks == 0
    assert sched.stats().num_preemptions == sched.num_preemptions


def test_an_earlier_arrival_that_needs_a_block_preempts_the_latest() -> None:
    sched = make(num_kv_blocks=3, block_size=4, max_model_len=12)
    a, b = new_seq(1, prompt_len=4, max_tokens=4), new_seq(2, prompt_len=8, max_tokens=4)
    sched.add(a)
    sched.add(b)
    sched.postprocess(out := sched.schedule(), sample(out))  # a: 1 block, b: 2 blocks, pool empty
    out = sched.schedule()  # a's 5th token needs a block: b gives its up
    assert out.preempted == [b] and [i.seq for i in out.items] == [a]
    assert sched.waiting[0] is b and b.num_computed_tokens == 0 and b.num_preemptions == 1
    sched.block_manager.verify(sched.running)


@pytest.mark.parametrize("where", ["waiting", "running"])
def test_abort_frees_blocks_at_once(where: str) -> None:
    sched = make()
    a, b = new_seq(1, prompt_len=9), new_seq(2, prompt_len=9)
    sched.add(a)
    sched.postprocess(out := sched.schedule(), sample(out))
    sched.add(b)
    victim = a if where == "running" else b
    used = sched.block_manager.num_used_blocks
    assert sched.abort(victim.seq_id) is victim
    assert victim.status is SequenceStatus.FINISHED_ABORTED and victim.finish_reason == "abort"
    assert victim.block_table == []
    assert sched.block_manager.num_used_blocks == used - (3 if where == "running" else 0)
    assert sched.abort(victim.seq_id) is None
    assert victim not in sched.running and victim not in sched.waiting


def test_abort_between_schedule_and_postprocess_is_skipped() -> None:
    sched = make()
    sched.add(a := new_seq(1))
    out = sched.schedule()
    sched.abort(1)
    assert sched.postprocess(out, sample(out)) == []
    assert a.output_token_ids == [] and sched.block_manager.num_used_blocks == 0


@pytest.mark.parametrize(
    ("params", "model_len", "picks", "reason", "outputs"),
    [
        ({"max_tokens": 3}, 16, [7, 8, 9, 10], "length", [7, 8, 9]),
        ({"max_tokens": 10}, 16, [7, EOS, 9], "stop", [7]),  # the stop token is not output
        ({"max_tokens": 4, "ignore_eos": True}, 16, [7, EOS, EOS, 9, 10], "length", [7, EOS, EOS, 9]),
        ({"max_tokens": 100}, 8, [7, 8, 9, 10, 11], "length", [7, 8, 9]),  # prompt 5 + 3 = max_model_len
    ],
)
def test_finish_conditions(
    params: dict[str, object], model_len: int, picks: list[int], reason: str, outputs: list[int]
) -> None:
    sched = make(max_model_len=model_len)
    s = new_seq(1, prompt_len=5, **params)
    sched.add(s)
    finished: list[Sequence] = []
    for token in picks:
        if not sched.has_unfinished:
            break
        finished += sched.postprocess(sched.schedule(), {1: [token]})
    assert finished == [s]
    assert s.finish_reason == reason and s.output_token_ids == outputs
    assert sched.block_manager.num_used_blocks == 0


def test_caller_finishes_on_a_stop_string() -> None:
    sched = make()
    sched.add(s := new_seq(1, max_tokens=50))
    sched.postprocess(out := sched.schedule(), sample(out))
    assert sched.finish(1) is s
    assert s.finish_reason == "stop" and sched.block_manager.num_used_blocks == 0
    with pytest.raises(ValueError, match="FINISHED_"):
        sched.finish(1, SequenceStatus.RUNNING)


def test_shared_prompt_prefix_hits_through_the_scheduler() -> None:
    sched = make()
    system = list(range(500, 512))  # three full blocks of 4
    a = Sequence(1, [*system, 1, 2], SamplingParams(max_tokens=2), arrival_s=1.0)
    b = Sequence(2, [*system, 3], SamplingParams(max_tokens=2), arrival_s=2.0)
    sched.add(a)
    drive(sched)
    sched.add(b)
    out = sched.schedule()
    assert (out.prefills[0].start, out.prefills[0].num_tokens) == (12, 1)
    assert b.num_cached_prefix_tokens == 12
    assert sched.stats().prefix_cache_hit_rate == pytest.approx(12 / (14 + 13))


def test_speculative_decode_feeds_drafts_and_keeps_accepted_ones() -> None:
    sched = make()
    sched.add(s := new_seq(1, prompt_len=5, max_tokens=20))
    sched.postprocess(out := sched.schedule(), {1: [50]})
    out = sched.schedule({1: [51, 52, 53]})
    (item,) = out.decodes
    assert (item.start, item.num_tokens, item.token_ids) == (5, 4, [50, 51, 52, 53])
    sched.postprocess(out, {1: accept_drafts([51, 52, 53], [51, 52, 60, 61])})
    assert s.output_token_ids == [50, 51, 52, 60]
    assert s.num_computed_tokens == s.num_tokens - 1 == 8  # 50, 51, 52 valid; 60 not fed yet
    stats = sched.stats()
    assert stats.spec_acceptance_rate == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("max_tokens", "budget", "expected_drafts"),
    [(20, 64, 4), (3, 64, 2), (2, 64, 1), (20, 3, 2)],
)
def test_drafts_are_clipped(max_tokens: int, budget: int, expected_drafts: int) -> None:
    sched = make(max_num_batched_tokens=budget, max_num_seqs=1)
    sched.add(new_seq(1, prompt_len=3, max_tokens=max_tokens))
    sched.postprocess(out := sched.schedule(), {1: [50]})  # one output so far
    out = sched.schedule({1: [1, 2, 3, 4]})
    (item,) = out.decodes
    assert len(item.draft_token_ids) == expected_drafts
    assert item.num_tokens == 1 + expected_drafts


def test_drafts_are_dropped_before_anyone_is_preempted() -> None:
    sched = make(num_kv_blocks=3, block_size=4, max_model_len=12)
    sched.add(new_seq(1, prompt_len=3, max_tokens=6))
    sched.add(new_seq(2, prompt_len=7, max_tokens=6))
    sched.postprocess(out := sched.schedule(), sample(out))
    assert sched.block_manager.num_free_blocks == 0
    out = sched.schedule({1: [1, 2, 3]})  # seq 1 would need a new block for its drafts
    assert [i.draft_token_ids for i in out.decodes] == [(), ()]
    assert sched.num_preemptions == 0


def fake_target(context: list[int]) -> int:
    """A deterministic 'model' that loves repeating itself, so prompt lookup has something to find."""
    return context[-3] if len(context) >= 3 and context[-1] % 3 else (context[-1] * 7 + 1) % 11


def test_greedy_output_is_identical_with_and_without_speculation() -> None:
    prompt = [3, 5, 3, 5, 3, 5, 1]

    def run(drafter: NgramDrafter | None) -> tuple[list[int], float | None]:
        sched = make()
        sched.add(s := Sequence(1, list(prompt), SamplingParams(max_tokens=40), arrival_s=0.0))
        while sched.has_unfinished:
            drafts = {1: drafter.propose(s.all_token_ids)} if drafter and s.is_decoding else None
            out = sched.schedule(drafts)
            sampled = {}
            for item in out.items:
                if item.samples:  # the target's greedy pick after the context and after each draft prefix
                    ctx, draft = item.seq.all_token_ids, list(item.draft_token_ids)
                    picks = [fake_target(ctx + draft[:j]) for j in range(len(draft) + 1)]
                    sampled[item.seq.seq_id] = accept_drafts(draft, picks)
            sched.postprocess(out, sampled)
            sched.block_manager.verify(sched.running)
        return s.output_token_ids, sched.stats().spec_acceptance_rate

    plain, no_rate = run(None)
    spec, rate = run(NgramDrafter(num_speculative_tokens=3))
    assert spec == plain and len(plain) == 40
    assert no_rate is None and rate is not None and rate > 0
