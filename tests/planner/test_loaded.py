"""The loaded-latency model (planner.loaded) and how predict uses it: mixed prefill/decode passes, the
M/D/1 prefill queue, waiting for a slot past capacity, the batched-token budget, the all-reduce cost
per link, and the KV-cache dtype an FP8 checkpoint brings to TensorRT-LLM."""

from __future__ import annotations

import math

import pytest

from planner.catalog import load_catalog
from planner.loaded import Budget, StepCost, allreduce_s, md1_wait_s, prompt_service_s, sustainable_batch, tpot_s
from planner.predict import Knobs, PlannedConfig, predict_config
from planner.roofline import Parallel, StepTime, gpu_device
from planner.slo_targets import slo_targets
from planner.workload import Workload

CAT = load_catalog()
H100 = CAT.gpus["h100-sxm"]


def toy_cost(per_seq_s: float = 0.0, fixed_s: float = 0.001) -> StepCost:
    """A pass: 10 ms of weight reads, 0.1 ms of compute per decoding sequence, a 1000-token prompt
    that alone computes for 50 ms."""

    def decode(b: int) -> StepTime:
        return StepTime(memory_s=0.010, compute_s=0.0001 * b)

    prompt = StepTime(memory_s=0.010, compute_s=0.050)
    return StepCost(decode, prompt, 1000, fixed_s, per_seq_s, lambda tokens: 0.0)


def test_a_pass_is_the_larger_of_reads_and_flops_plus_its_fixed_costs() -> None:
    cost = toy_cost(per_seq_s=1e-5)
    assert cost(1) == pytest.approx(0.010 + 0.001 + 1e-5)  # memory-bound decode
    # a 500-token chunk beside 10 decodes: 1 ms of decode FLOPs + 25 ms of prompt FLOPs outlast the reads
    assert cost(10, 500) == pytest.approx(0.001 + 0.025 + 0.001 + 10 * 1e-5)
    assert cost(0, 1000) == pytest.approx(0.050 + 0.001)  # the prompt alone


def test_a_prompt_pass_fixed_cost_is_charged_only_where_prompt_tokens_ride() -> None:
    """A step log prices prompt passes above their FLOPs (on the bundled CPU engine ~25 ms a pass):
    `prompt_fixed_s` charges it to passes with prompt tokens, never to plain decodes."""
    plain = toy_cost()
    cost = StepCost(plain.decode, plain.prompt, 1000, 0.001, 0.0, lambda tokens: 0.0, prompt_fixed_s=0.025)
    assert cost(4) == pytest.approx(plain(4))
    assert cost(4, 500) == pytest.approx(plain(4, 500) + 0.025)
    assert cost(0, 1000) == pytest.approx(plain(0, 1000) + 0.025)


def test_a_prompt_is_chunked_by_what_the_budget_leaves() -> None:
    cost = toy_cost()
    chunked = prompt_service_s(cost, Budget(512, chunked=True), others=12, input_tokens=1000)
    assert chunked == pytest.approx(2 * cost(12, 500))  # 500 of 512 tokens left per pass: two passes
    whole = prompt_service_s(cost, Budget(512, chunked=False), others=12, input_tokens=1000)
    assert whole == pytest.approx(cost(12, 1000))  # unchunked: one pass whatever the budget


def test_tpot_counts_the_passes_that_carry_other_prompts() -> None:
    cost, budget = toy_cost(), Budget(8192, chunked=True)
    alone = tpot_s(cost, budget, 1, 1000, 100)
    assert alone == pytest.approx(cost(1))
    loaded = tpot_s(cost, budget, 8, 1000, 100)
    # 7 others replaced over 99 steps, each prompt in one pass: 7 x 99/100 mixed passes
    mixed = 7 * 99 / 100
    expected = ((99 - mixed) * cost(8) + mixed * cost(8, 1000)) / 99
    assert loaded == pytest.approx(expected)
    assert loaded > cost(8)


def test_the_batch_is_held_to_what_the_budget_can_refill() -> None:
    assert sustainable_batch(4096, Budget(8192, True), 128, 128) == 4096  # (8192 + 1) / 2
    assert sustainable_batch(4096, Budget(2048, True), 128, 128) == 1024
    assert sustainable_batch(4096, Budget(2048, False), 128, 128) == 4096  # whole prompts: no such cap


def test_md1_wait_is_pollaczek_khinchine() -> None:
    assert md1_wait_s(0.0, 0.1) == 0.0
    assert md1_wait_s(5.0, 0.1) == pytest.approx(0.5 * 0.1 / (2 * 0.5))
    assert math.isinf(md1_wait_s(10.0, 0.1))


def test_allreduce_takes_the_faster_algorithm_per_message() -> None:
    links = CAT.engines_file.tensor_parallel_efficiency.links("nvlink")
    one_token = allreduce_s(1, 8192, 2, 80, links)
    # 160 one-shot all-reduces of 16 KiB at ~4 us each
    assert one_token == pytest.approx(160 * (4e-6 + 16384 / 66e9), rel=1e-6)
    big = allreduce_s(5000, 8192, 2, 80, links)
    assert big == pytest.approx(160 * (15e-6 + 5000 * 16384 / 360e9), rel=1e-6)  # the ring wins
    assert allreduce_s(5000, 8192, 1, 80, links) == 0.0
    pcie = allreduce_s(1, 8192, 2, 80, CAT.engines_file.tensor_parallel_efficiency.links("pcie"))
    assert pcie > one_token


def _nim_70b(concurrency: int, knobs: Knobs | None = None):  # noqa: ANN202 - a ConfigPrediction
    work = Workload(8192, concurrency, 5000, 500, slo_targets("chat"))
    two = gpu_device(H100, 2)
    return predict_config(
        PlannedConfig(
            CAT.models["llama-3.1-70b"],
            two,
            CAT.engines["tensorrt-llm"],
            CAT.formats["fp8"],
            Parallel(2),
            work,
            CAT,
            knobs or Knobs(),
        ),
    )


def test_an_fp8_checkpoint_brings_an_fp8_kv_cache_to_tensorrt_llm() -> None:
    auto = _nim_70b(1)
    assert auto.assumptions["kv_cache_dtype"] == "fp8" and auto.assumptions["kv_cache_dtype_bytes"] == 1
    vllm = predict_config(
        PlannedConfig(
            CAT.models["llama-3.1-70b"],
            gpu_device(H100, 2),
            CAT.engines["vllm"],
            CAT.formats["fp8"],
            Parallel(2),
            Workload(8192, 1, 5000, 500, slo_targets("chat")),
            CAT,
        ),
    )
    assert vllm.assumptions["kv_cache_dtype"] == "auto" and vllm.assumptions["kv_cache_dtype_bytes"] == 2


def test_past_capacity_a_closed_loop_waits_for_a_slot() -> None:
    under, at, over = _nim_70b(25), _nim_70b(150), _nim_70b(250)
    cap = at.max_batch
    assert under.batch == 25 and cap < 150
    assert at.batch == over.batch == cap
    assert at.output_tok_s == pytest.approx(over.output_tok_s)  # saturated: the rate stops growing
    # each extra client adds one request's worth of the saturated rate to the wait
    assert over.ttft_s - at.ttft_s == pytest.approx(100 / at.requests_s, rel=1e-6)
    assert under.ttft_s < at.ttft_s / 10


def test_the_prefill_queue_grows_with_load_below_capacity() -> None:
    ttfts = [_nim_70b(c).ttft_s for c in (1, 5, 25, 50)]
    assert ttfts == sorted(ttfts)
    assert _nim_70b(1).ttft_wait_s == 0.0  # one client never waits for itself
