"""The batched CUDA-graph decode step's padding, run eagerly on CPU so CI checks it without a GPU.

`BatchConfig(decode_graphs="uncaptured")` runs exactly the step a graph records: the batch padded
to a bucket with rows that decode in the scratch block, keys padded to a power-of-two width and
masked past each row's position, slots and key rows looked up from block tables on the device.
fp32 weights, so every figure must match the eager batch (tokens exactly, logprobs to rounding).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from engine.batch.batch_engine import BatchConfig, BatchEngine
from engine.batch.decode_graphs import DecodeGraphs, batch_buckets, width_buckets
from engine.batch.paged_cache import PagedKVCache
from engine.run.runtime import Engine, LoadOptions
from engine.sampling import SamplingParams
from engine.studies.base import eval_ids
from tests.engine.batch_helpers import run_until_done

GREEDY = SamplingParams(max_tokens=16, ignore_eos=True, logprobs=True)
SAMPLED = SamplingParams(max_tokens=16, ignore_eos=True, logprobs=True, temperature=0.8, top_p=0.9, seed=7)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(LoadOptions(quant="fp32", device="cpu"))


def _run(
    engine: Engine, config: BatchConfig, prompts: list[list[int]], late: list[int] | None
) -> tuple[dict, BatchEngine]:
    """Tokens and logprobs per request; `late` joins after three steps (a prompt chunk beside decodes)."""
    llm = BatchEngine(engine.loaded, config)
    params = [GREEDY, SAMPLED, GREEDY]
    ids = [llm.add_request(p, params[i % 3]) for i, p in enumerate(prompts)]
    got: dict[int, tuple[list[int], list[float]]] = {}
    for step in range(2000):
        if step == 3 and late is not None:
            ids.append(llm.add_request(late, GREEDY))
        if not llm.has_unfinished and step > 3:
            break
        for out in llm.step().outputs:
            tokens, lps = got.setdefault(out.seq_id, ([], []))
            tokens.extend(out.new_token_ids)
            lps.extend(out.logprobs or [])
    return got, llm


def test_buckets() -> None:
    assert batch_buckets(1) == [1]
    assert batch_buckets(16) == [1, 2, 4, 8, 16]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]
    assert width_buckets(100) == [100]
    assert width_buckets(300) == [256, 300]
    assert width_buckets(8192) == [256, 512, 1024, 2048, 4096, 8192]


def test_capturing_every_shape_up_front_writes_only_the_scratch_block(engine: Engine) -> None:
    """What the server does on CUDA before it reports ready: every bucket's step runs on padding rows alone."""
    config = BatchConfig(max_num_seqs=4, max_model_len=300, decode_graphs="uncaptured")
    llm = BatchEngine(engine.loaded, config)
    assert llm.graphs is not None and llm.graphs.capture_all() == 3 * 2  # batches 1, 2, 4 x widths 256, 300
    scratch = llm.cache.scratch_block
    assert scratch == llm.scheduler.config.num_kv_blocks  # past every block the block manager hands out
    bs = llm.cache.block_size
    for pool in (*llm.cache.keys, *llm.cache.values):
        assert not pool[: scratch * bs].any()
        assert pool[scratch * bs].any()  # the padding rows' one position
    text = eval_ids(engine.loaded.tokenizer, 60)
    want, _ = _run(engine, replace(config, decode_graphs="off"), [text[:20], text[20:50]], None)
    got, _ = _run(engine, config, [text[:20], text[20:50]], None)
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want.items()}


@pytest.mark.parametrize("late", [False, True])
def test_padded_steps_decode_as_the_eager_batch(engine: Engine, late: bool) -> None:
    """Without `late`, the three sequences decode side by side from start to end, padded to 4 rows, the
    first one in the pool's block 0 all along: a padding row writing anywhere but the scratch block shows."""
    text = eval_ids(engine.loaded.tokenizer, 300)
    # the 246-token prompt's keys cross the 256-wide bucket into 512
    prompts = [text[:5], text[40:63], text[:246]]
    joins = text[100:130] if late else None
    config = dict(max_num_seqs=6, max_model_len=1024, max_num_batched_tokens=512, prefill_chunk_size=256)
    want, _ = _run(engine, BatchConfig(**config, decode_graphs="off"), prompts, joins)
    got, llm = _run(engine, BatchConfig(**config, decode_graphs="uncaptured"), prompts, joins)
    assert set(got) == set(want)
    for seq_id, (tokens, lps) in want.items():
        assert got[seq_id][0] == tokens, seq_id
        assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(got[seq_id][1], lps, strict=True)), seq_id
    assert llm.graphs is not None
    used = llm.graphs.replays
    assert (4, 256) in used and (4, 512) in used, used  # padded rows, then the wider key bucket
    assert llm.scheduler.block_manager.usage == 0.0


def test_preemption_and_speculation_around_padded_steps(engine: Engine) -> None:
    """Re-allocated block tables after preemption, and n-gram drafts (eager) between padded decode steps."""
    text = eval_ids(engine.loaded.tokenizer, 100)
    block_bytes = 2 * 30 * 16 * 3 * 64 * 4  # K+V, 30 layers, 16 tokens, 3 KV heads, dim 64, fp32
    prompts = [text[:20], text[20:40], text[40:60]]
    for extra in (dict(kv_cache_bytes=5 * block_bytes, max_model_len=64), dict(speculative_tokens=3)):
        want, _ = _run(engine, BatchConfig(max_num_seqs=4, **extra, decode_graphs="off"), prompts, text[60:70])
        got, llm = _run(engine, BatchConfig(max_num_seqs=4, **extra, decode_graphs="uncaptured"), prompts, text[60:70])
        assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want.items()}, extra
        assert llm.graphs is not None and llm.graphs.replays, extra
        if "kv_cache_bytes" in extra:  # three 2-block sequences in a 5-block pool: one is always preempted
            assert llm.scheduler.num_preemptions > 0


def test_graphs_are_off_on_cpu_by_default_and_need_cuda_to_capture(engine: Engine) -> None:
    assert BatchEngine(engine.loaded, BatchConfig()).graphs is None
    loaded = engine.loaded
    cache = PagedKVCache(loaded.config, 8, 16, loaded.model.act_dtype, "cpu", scratch_block=True)
    with pytest.raises(ValueError, match="CUDA graphs need a model on a CUDA device"):
        DecodeGraphs(loaded.model, cache, 4, 128)
    plain = PagedKVCache(loaded.config, 8, 16, loaded.model.act_dtype, "cpu")
    with pytest.raises(ValueError, match="scratch block"):
        DecodeGraphs(loaded.model, plain, 4, 128, capture=False)
    graphs = DecodeGraphs(loaded.model, cache, 4, 128, capture=False)
    assert graphs.shape(3, 20) == (4, 128)  # the width never exceeds max_model_len
    with pytest.raises(ValueError, match="exceed max_num_seqs 4"):
        graphs.shape(5, 20)


def test_a_failed_capture_at_server_start_leaves_eager_decode(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """The server's start-up capture failing for real (here: no CUDA in this torch) is a warning, not a failed
    load, and the engine then decodes eagerly with the same tokens."""
    from engine.serving.options import ServerOptions
    from engine.serving.state import ServerState

    config = BatchConfig(max_num_seqs=2, max_model_len=128, decode_graphs="uncaptured")
    llm = BatchEngine(engine.loaded, config)
    assert llm.graphs is not None
    llm.graphs.capture = True  # as on a GPU: the start-up capture runs, and fails on this CPU-only torch
    state = ServerState(ServerOptions(), "m", load=lambda: engine)
    with caplog.at_level("WARNING", logger="preflight.server"):
        state._capture_graphs(llm)
    assert llm.graphs is None
    assert "serving with eager batched decode: capturing its CUDA graphs failed" in caplog.text
    text = eval_ids(engine.loaded.tokenizer, 20)[:20]
    want, _ = _run(engine, replace(config, decode_graphs="off"), [text], None)
    seq = llm.add_request(text, GREEDY)
    assert run_until_done(llm, [seq])[seq] == want[0][0]


def test_a_draft_models_drafting_forwards_replay_its_own_graphs(engine: Engine) -> None:
    """The draft keeps its own pool; its one-token drafting forwards go through padded steps over that pool.
    The target itself as the draft proposes the target's own greedy tokens, so a draft K/V written to the
    wrong slot, or read past its position, shows as a rejected draft."""
    text = eval_ids(engine.loaded.tokenizer, 100)
    prompts = [text[:20], text[20:45], text[45:52]]

    def run(mode: str) -> tuple[dict, BatchEngine]:
        config = BatchConfig(max_num_seqs=4, speculative_tokens=4, decode_graphs=mode)
        llm = BatchEngine(engine.loaded, config, draft=engine.loaded)
        ids = [llm.add_request(p, GREEDY) for p in prompts]
        return run_until_done(llm, ids), llm

    want, eager = run("off")
    got, llm = run("uncaptured")
    assert got == want
    assert llm.draft_model is not None and llm.draft_model.graphs is not None
    assert llm.draft_model.graphs.replays, "no drafting forward went through the padded step"
    assert len(llm.decode_graphs) == 2
    assert llm.kv_stats().spec_acceptance_rate == eager.kv_stats().spec_acceptance_rate == 1.0
    # every draft K/V the eager run wrote, the padded steps wrote too, and nothing else outside the scratch block
    slots = eager.draft_model.cache.num_blocks * eager.draft_model.cache.block_size
    for mine, theirs in zip(
        (*llm.draft_model.cache.keys, *llm.draft_model.cache.values),
        (*eager.draft_model.cache.keys, *eager.draft_model.cache.values),
        strict=True,
    ):
        torch.testing.assert_close(mine[:slots], theirs, atol=1e-4, rtol=1e-4)
