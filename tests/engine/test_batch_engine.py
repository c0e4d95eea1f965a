"""Continuous batching on the real model: many sequences in one paged KV pool.

fp32 weights, so batched and single-sequence forwards round the same way and
greedy outputs must agree token for token.
"""

from __future__ import annotations

import pytest

from engine.batch.batch_engine import BatchConfig, BatchEngine
from engine.run.runtime import Engine, LoadOptions
from engine.sampling import SamplingParams
from tests.engine.batch_helpers import run_until_done

PROMPTS = [
    "The capital of France is",
    "def add(a, b):\n    ",
    "Three primary colours are",
    "Once upon a time there was a little robot who",
]
GREEDY = SamplingParams(max_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(LoadOptions(quant="fp32", device="cpu"))


def _alone(engine: Engine, prompt: str, params: SamplingParams = GREEDY) -> list[int]:
    return engine.generate(prompt, params).token_ids


def test_concurrent_sequences_match_running_alone(engine: Engine) -> None:
    llm = BatchEngine(engine.loaded, BatchConfig(max_num_seqs=4, max_num_batched_tokens=64, prefill_chunk_size=8))
    ids = {llm.add_request(engine.encode_prompt(p), GREEDY): p for p in PROMPTS}
    outputs = run_until_done(llm, ids)
    for seq_id, prompt in ids.items():
        assert outputs[seq_id] == _alone(engine, prompt), prompt
    assert llm.scheduler.block_manager.usage == 0.0


def test_preemption_under_a_tiny_block_pool(engine: Engine) -> None:
    # Three prompts of two blocks each (prompt + 20 tokens > 16) in a pool of five: one is always preempted.
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    block_bytes = 2 * 30 * 16 * 3 * 64 * 4  # K+V, 30 layers, 16 tokens, 3 KV heads, dim 64, fp32
    config = BatchConfig(max_num_seqs=4, max_model_len=64, block_size=16, kv_cache_bytes=5 * block_bytes)
    llm = BatchEngine(engine.loaded, config)
    assert llm.scheduler.config.num_kv_blocks == 5
    ids = {llm.add_request(engine.encode_prompt(p), params): p for p in PROMPTS[:3]}
    outputs = run_until_done(llm, ids)
    assert llm.scheduler.num_preemptions > 0
    for seq_id, prompt in ids.items():
        assert outputs[seq_id] == _alone(engine, prompt, params), prompt


def test_speculative_decoding_is_exact_and_accepts_drafts(engine: Engine) -> None:
    prompt = "Repeat after me: one two three four five, one two three four five, one two three"
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    llm = BatchEngine(engine.loaded, BatchConfig(speculative_tokens=4))
    seq_id = llm.add_request(engine.encode_prompt(prompt), params)
    outputs = run_until_done(llm, {seq_id: []})
    assert outputs[seq_id] == _alone(engine, prompt, params)
    rate = llm.kv_stats().spec_acceptance_rate
    assert rate is not None and rate > 0


def test_shared_prefix_hits_the_cache(engine: Engine) -> None:
    system = "You are a meticulous assistant. " * 8
    llm = BatchEngine(engine.loaded, BatchConfig(block_size=16))
    first = llm.add_request(engine.encode_prompt(system + "Question one?"), SamplingParams(max_tokens=2))
    run_until_done(llm, {first: []})
    second = llm.add_request(engine.encode_prompt(system + "Question two?"), SamplingParams(max_tokens=2))
    run_until_done(llm, {second: []})
    rate = llm.kv_stats().prefix_cache_hit_rate
    assert rate is not None and rate > 0.3


def test_abort_frees_blocks_at_once(engine: Engine) -> None:
    llm = BatchEngine(engine.loaded, BatchConfig())
    seq_id = llm.add_request(engine.encode_prompt(PROMPTS[0]), SamplingParams(max_tokens=100, ignore_eos=True))
    llm.step()
    llm.step()
    assert llm.scheduler.block_manager.num_used_blocks > 0
    llm.abort(seq_id)
    assert llm.scheduler.block_manager.num_used_blocks == 0
    assert not llm.has_unfinished


def test_sampled_requests_are_reproducible_with_a_seed(engine: Engine) -> None:
    params = SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, seed=7, logprobs=True)
    runs = []
    for _ in range(2):
        llm = BatchEngine(engine.loaded, BatchConfig())
        seq_id = llm.add_request(engine.encode_prompt(PROMPTS[2]), params)
        runs.append(run_until_done(llm, {seq_id: []})[seq_id])
    assert runs[0] == runs[1]
