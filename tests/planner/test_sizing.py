"""Every sizing and roofline formula against numbers computed by hand (arithmetic in the comments)."""

from __future__ import annotations

import dataclasses

import pytest

from planner.capacity import Replica, best_batch, plan_capacity
from planner.catalog import load_catalog
from planner.roofline import (
    Parallel,
    critical_batch,
    critical_batch_dense,
    decode_step,
    expected_experts,
    gpu_device,
    prefill,
    prefill_flops,
    ridge_point,
)
from planner.sizing import (
    MemoryConfig,
    kv_bytes_per_sequence,
    kv_bytes_per_token,
    kv_bytes_per_token_per_device,
    plan_memory,
    sixteen_bit_params,
    weight_bytes,
)

CAT = load_catalog()
M = CAT.models
F = CAT.formats
H100 = gpu_device(CAT.gpus["h100-sxm"])


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("llama-3.1-8b", 131_072),  # 2 x 32 layers x 8 KV heads x 128 x 2 bytes
        ("llama-3.1-70b", 327_680),  # 2 x 80 x 8 x 128 x 2
        ("llama-3.1-405b", 516_096),  # 2 x 126 x 8 x 128 x 2
        ("smollm2-135m", 23_040),  # 2 x 30 x 3 x 64 x 2
        ("deepseek-v3", 70_272),  # MLA: 61 layers x (512 latent + 64 RoPE key) x 2
    ],
)
def test_kv_bytes_per_token(model: str, expected: int) -> None:
    assert kv_bytes_per_token(M[model]) == expected


def test_kv_under_tensor_parallel() -> None:
    assert kv_bytes_per_token_per_device(M["llama-3.1-70b"], tp=2) == 163_840  # 4 of 8 KV heads per rank
    assert kv_bytes_per_token_per_device(M["llama-3.1-70b"], tp=16) == 40_960  # 1 head per rank, replicated
    assert kv_bytes_per_token_per_device(M["deepseek-v3"], tp=8) == 70_272  # the MLA latent is not split


def test_sliding_window_keeps_only_the_window() -> None:
    mistral = M["mistral-7b"]
    assert kv_bytes_per_sequence(mistral, 2000) == 2000 * 131_072
    assert kv_bytes_per_sequence(mistral, 8192) == 4096 * 131_072  # window 4096 on every layer
    half = dataclasses.replace(mistral, sliding_window_layers=16)
    assert kv_bytes_per_sequence(half, 8192) == 16 * 4096 * 4096 + 16 * 4096 * 8192  # per layer 4096 B/token
    assert kv_bytes_per_sequence(M["llama-3.1-8b"], 1000, block_size=16) == 1008 * 131_072  # 63 blocks


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("bf16", 16_060_522_496),  # 8,030,261,248 x 2
        ("fp8", 9_080_934_400),  # body 6,979,588,096 x 1 + table and head 1,050,673,152 x 2
        ("awq", 5_727_460_432),  # body x 4.15625 / 8 = 3,626,114,128 + 2,101,346,304
        ("q4_k_m", 4_918_535_015),  # 8,030,261,248 x 4.90 / 8, body and table each rounded up
    ],
)
def test_weight_bytes_llama_8b(fmt: str, expected: int) -> None:
    assert weight_bytes(M["llama-3.1-8b"], F[fmt]).total == expected


def test_meta_fp8_checkpoint_keeps_attention_and_edge_layers_16_bit() -> None:
    """Llama-3.1-405B in Meta's FP8 layout: only the MLPs of layers 1..124 are FP8."""
    model, fmt = M["llama-3.1-405b"], F["fbgemm-fp8"]
    # norms 253 x 16384 = 4,145,152 + attention 126 x 570,425,344 = 71,873,593,344
    # + layers 0 and 125's MLPs 2 x 3 x 16384 x 53248 = 5,234,491,392
    assert sixteen_bit_params(model, fmt) == 77_112_229_888
    wb = weight_bytes(model, fmt)
    # FP8: 401,650,696,192 body - 77,112,229,888 kept = 324,538,466,304 (124 MLPs) x 1; kept x 2
    assert wb.body == 324_538_466_304 + 2 * 77_112_229_888
    assert wb.embedding == 2 * 4_202_692_608  # table and untied head, BF16
    assert wb.total / 8 / 2**30 == pytest.approx(56.71, abs=0.01)  # per rank at TP 8; vLLM logged 57.752
    assert wb.total > weight_bytes(model, F["fp8"]).total  # uniform FP8 is 17% lighter


def test_a_dense_layout_refuses_moe_models() -> None:
    with pytest.raises(ValueError, match="layout of dense checkpoints"):
        weight_bytes(M["mixtral-8x7b"], F["fbgemm-fp8"])


def test_vllm_block_arithmetic_llama_8b_bf16_on_h100() -> None:
    # MemoryConfig's defaults are the generic (V0-log) rule; vLLM's per-release rules are in test_vllm_memory.py.
    cfg = MemoryConfig(max_num_batched_tokens=8192)  # vLLM's default on an H100 (engines.json)
    plan = plan_memory(M["llama-3.1-8b"], F["bf16"], H100.memory_bytes, 8192, 1280, cfg)
    assert plan.device_bytes == 85_018_542_080  # 81,080 MiB, the 79.18 GiB CUDA reports
    assert plan.budget_bytes == 76_516_687_872  # x 0.9
    # max(8192 x (3 x 14336 + 3 x 4096) x 2, 256 x 128256 x 4 logits)
    assert plan.activation_bytes == 905_969_664
    assert plan.overhead_bytes == 1_700_370_841  # max(1 GiB, 2% of 85.0 GB)
    # 76,516,687,872 - 16,060,522,496 - 905,969,664 - 1,700,370,841
    assert plan.kv_budget_bytes == 57_849_824_871
    assert plan.num_blocks == 27_584  # // (16 x 131,072 = 2,097,152)
    assert plan.kv_tokens == 441_344
    assert plan.max_seqs_at_context == 53  # 27,584 // (8192 / 16 = 512 blocks)
    assert plan.max_seqs_at_workload == 344  # 27,584 // 80
    assert plan.fits


def test_does_not_fit_says_by_how_much() -> None:
    plan = plan_memory(M["llama-3.1-70b"], F["bf16"], H100.memory_bytes, 8192, 1280, MemoryConfig())
    assert not plan.fits and plan.kv_budget_bytes < 0
    assert plan.shortfall_bytes() == 8192 * 327_680 - plan.kv_budget_bytes
    tp2 = plan_memory(M["llama-3.1-70b"], F["bf16"], H100.memory_bytes, 8192, 1280, MemoryConfig(), tp=2)
    assert tp2.fits and tp2.weights_bytes == 141_107_412_992 // 2 and tp2.kv_bytes_per_token == 163_840


def test_prefill_flops_and_ttft() -> None:
    # body matmuls 32 x 218,103,808 = 6,979,321,856 params x 2 x 1000 tokens
    # + head 2 x 525,336,576 once + attention 2 x 32 x 32 x 128 x 1000^2
    flops = 2 * 6_979_321_856 * 1000 + 2 * 525_336_576 + 262_144_000_000
    assert prefill_flops(M["llama-3.1-8b"], 1000) == flops == 14_221_838_385_152
    step = prefill(M["llama-3.1-8b"], F["bf16"], H100, 1000, flops_efficiency=0.6)
    assert step.compute_s == pytest.approx(flops / (989e12 * 0.6))  # 23.97 ms
    assert step.bound == "compute"


def test_decode_is_memory_bound_at_batch_1() -> None:
    step = decode_step(M["llama-3.1-8b"], F["bf16"], H100, batch=1, context=0)
    assert step.bytes_read == 15_009_849_344  # 16,060,522,496 less the 128256 x 4096 x 2 B lookup table
    assert step.memory_s == pytest.approx(15_009_849_344 / 3.35e12)  # 4.48 ms: 223 tok/s
    assert step.bound == "memory"
    kv = decode_step(M["llama-3.1-8b"], F["bf16"], H100, batch=64, context=1000)
    assert kv.bytes_read == 15_009_849_344 + 64 * 1000 * 131_072


def test_ridge_and_critical_batch() -> None:
    assert ridge_point(H100, F["bf16"]) == pytest.approx(295.22, abs=0.01)  # 989e12 / 3.35e12
    # ridge x weights read / (2 x 7,504,658,432 matmul params): about 2 bytes per 2 FLOPs, so ~ the ridge
    assert critical_batch_dense(M["llama-3.1-8b"], F["bf16"], H100) == pytest.approx(
        295.2239 * 15_009_849_344 / (2 * 7_504_658_432), rel=1e-4
    )  # 295.23
    assert critical_batch(M["llama-3.1-8b"], F["bf16"], H100, 0) == pytest.approx(295.2, abs=1)
    assert critical_batch(M["llama-3.1-8b"], F["bf16"], H100, 100_000) is None  # KV reads outgrow the FLOPs


def test_tensor_parallel_split() -> None:
    one = decode_step(M["llama-3.1-70b"], F["bf16"], H100, 8, 1000)
    two = decode_step(M["llama-3.1-70b"], F["bf16"], H100, 8, 1000, parallel=Parallel(tp=2, efficiency=1.0))
    lossy = decode_step(M["llama-3.1-70b"], F["bf16"], H100, 8, 1000, parallel=Parallel(tp=2, efficiency=0.9))
    assert two.memory_s == pytest.approx(one.memory_s / 2)
    assert lossy.memory_s == pytest.approx(one.memory_s / 1.8)


def test_moe_reads_only_the_experts_it_touches() -> None:
    mixtral = M["mixtral-8x7b"]
    assert expected_experts(mixtral, 1) == 2  # 8 x (1 - 6/8)
    assert expected_experts(mixtral, 2) == pytest.approx(3.5)  # 8 x (1 - (6/8)^2)
    b1 = decode_step(mixtral, F["bf16"], H100, 1, 0)
    # all weights less the lookup table (32000 x 4096 x 2 B) less 6 of 8 experts (32 x 6 x 3 x 4096 x 14336 x 2 B)
    assert b1.bytes_read == pytest.approx(46_702_792_704 * 2 - 262_144_000 - 67_645_734_912)
    assert b1.flops == 2 * (12_879_925_248 - 131_072_000 - 65 * 4096)  # active matmul params, no lookup or norms


def test_capacity_by_hand() -> None:
    def tpot(b: int) -> float:
        return 0.010 + 0.001 * b

    assert best_batch(tpot, 64, 0.05) == 40  # 0.010 + 0.001 x 40 = 0.05
    assert best_batch(tpot, 64, 0.005) == 1  # missed even at 1: the least bad
    cap = plan_capacity(
        Replica(tpot, 0.1, 64, 2), output_tokens=100, price_per_device_hour=2.0, tpot_target_s=0.05, target_rps=10
    )
    assert cap.batch == 40 and cap.tpot_ms == pytest.approx(50)
    assert cap.rps_per_replica == pytest.approx(1 / (0.1 + 100 * 0.05 / 40))  # 4.444 req/s
    assert (cap.replicas, cap.devices) == (3, 6)
    assert cap.cost_per_hour == pytest.approx(12.0)
    assert cap.cost_per_m_output_tokens == pytest.approx(12.0 / (10 * 100 * 3600 / 1e6))  # $3.33
    free = plan_capacity(Replica(tpot, 0.1, 64, 2), 100, None, 0.05)
    assert free.cost_per_m_output_tokens is None and free.replicas is None
