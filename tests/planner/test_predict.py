"""One configuration predicted (planner.predict, python -m planner predict), and the five planner bugs of
issue 22 that it fixes: idle replicas, prefill-free throughput, no max_num_seqs cap, "fits" where vLLM
refuses to start, and --max-num-seqs 1 in the launch command."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from planner.__main__ import main
from planner.catalog import load_catalog
from planner.entrypoints import predict_one
from planner.errors import PlannerError, WorkloadError
from planner.hardware import detect
from planner.launch import LaunchSpec, launch_command
from planner.predict import Knobs, PlannedConfig, dispatch_overhead_s, predict_config, scheduler_limits
from planner.predict_io import PredictOptions, PredictResult
from planner.roofline import Device, Parallel, gpu_device
from planner.sizing import GIB
from planner.slo_targets import slo_targets
from planner.workload import Workload
from tests.planner.test_recommend import plan

CAT = load_catalog()
LLAMA_8B = CAT.models["llama-3.1-8b"]
VLLM = CAT.engines["vllm"]
BF16 = CAT.formats["bf16"]
# The RTX 3090 of vllm-project/vllm issue #10517, as vLLM measured it: total_gpu_memory=23.58GiB.
RTX_3090 = Device(
    name="NVIDIA GeForce RTX 3090",
    kind="gpu",
    vendor="nvidia",
    memory_bytes=int(23.58 * GIB),
    bandwidth_bytes_s=936e9,
    flops={"fp16": 71e12, "bf16": 71e12, "fp8": None, "int8": 284e12},
    compute_capability="8.6",
)


def workload(context: int = 8192, concurrency: int = 1, inp: int = 1024, out: int = 256) -> Workload:
    return Workload(context, concurrency, inp, out, slo_targets("chat"))


def predict(**kw: object) -> PredictResult:
    return predict_one(PredictOptions(**kw), hw=detect())


# -- bug 1: idle replicas are not throughput ---------------------------------------------


def test_idle_replicas_do_not_count_as_throughput() -> None:
    two = gpu_device(CAT.gpus["h100-sxm"], 2)
    tp1 = predict_config(PlannedConfig(LLAMA_8B, two, VLLM, BF16, Parallel(1), workload(), CAT))
    assert tp1.replicas == 2 and tp1.busy_replicas == 1
    # one request in flight: its own rate, not replicas x batch / TPOT
    assert tp1.output_tok_s == pytest.approx(256 / tp1.e2e_s)
    assert tp1.output_tok_s < 1.5 / tp1.tpot_s


def test_low_concurrency_ranks_splits_by_latency() -> None:
    p = plan(model="llama-3.1-8b", gpu="h100-sxm", gpus=2, context=8192, concurrency=1)
    vllm = next(o for o in p.options if (o.engine, o.format) == ("vllm", "bf16"))
    assert vllm.tp == 2  # TP 2 halves the weight read per step: lower latency than TP 1 x 2 replicas
    two = gpu_device(CAT.gpus["h100-sxm"], 2)
    tp1 = predict_config(PlannedConfig(LLAMA_8B, two, VLLM, BF16, Parallel(1), workload(), CAT))
    assert vllm.prediction.e2e_ms < tp1.e2e_s * 1e3
    assert vllm.prediction.output_tok_s > tp1.output_tok_s


# -- bug 2: the saturated figure pays for prefill --------------------------------------------


def test_saturated_throughput_includes_prefill() -> None:
    h100 = gpu_device(CAT.gpus["h100-sxm"])
    cp = predict_config(PlannedConfig(LLAMA_8B, h100, VLLM, BF16, Parallel(1), workload(concurrency=64), CAT))
    assert cp.step_s is not None
    decode_only = cp.max_batch / cp.step_s(cp.max_batch)  # the old "out tok/s": batch / TPOT
    assert cp.max_output_tok_s < decode_only
    assert cp.output_tok_s <= cp.max_output_tok_s
    # every request's service at saturation: its own prompt beside the full batch, then 255 loaded steps
    assert cp.saturated_e2e_s > 255 * cp.saturated_tpot_s
    assert cp.max_output_tok_s == pytest.approx(cp.replicas * cp.max_batch * 256 / cp.saturated_e2e_s)


def test_plan_table_labels_both_rates() -> None:
    from planner.tables import options_frame

    frame = options_frame(plan(model="llama-3.1-8b", gpu="l4", context=4096, concurrency=8))
    assert {"out tok/s at this load", "saturated out tok/s (prefill incl.)"} <= set(frame.columns)
    assert "output tok/s" not in frame.columns


# -- bug 3: vLLM's own batch limits ---------------------------------------------------------


@pytest.mark.parametrize(
    ("gpu", "seqs", "tokens"),
    [("h100-sxm", 1024, 8192), ("h200", 1024, 8192), ("a100-80", 256, 2048), ("l4", 256, 2048)],
)
def test_vllm_defaults_follow_the_device(gpu: str, seqs: int, tokens: int) -> None:
    limits = scheduler_limits(VLLM, gpu_device(CAT.gpus[gpu]), 8192, Parallel(1), CAT, Knobs())
    assert (limits.max_num_seqs, limits.max_num_batched_tokens, limits.chunked_prefill) == (seqs, tokens, True)
    assert "arg_utils.py" in limits.source


def test_vllm_default_rules_for_chunked_prefill_off_and_user_values() -> None:
    l4 = gpu_device(CAT.gpus["l4"])
    off = scheduler_limits(VLLM, l4, 29000, Parallel(1), CAT, Knobs(chunked_prefill=False))
    assert off.max_num_batched_tokens == 29000  # raised to max_model_len
    mine = scheduler_limits(VLLM, l4, 8192, Parallel(1), CAT, Knobs(max_num_seqs=8, max_num_batched_tokens=4096))
    assert (mine.max_num_seqs, mine.max_num_batched_tokens) == (8, 4096)


def test_batch_is_capped_at_max_num_seqs() -> None:
    h100 = gpu_device(CAT.gpus["h100-sxm"])
    small = CAT.models["llama-3.2-1b"]
    cp = predict_config(PlannedConfig(small, h100, VLLM, BF16, Parallel(1), workload(concurrency=5000), CAT))
    assert cp.kv_batch_limit > 1024 and cp.max_batch == cp.batch == 1024
    capped = predict_config(
        PlannedConfig(small, h100, VLLM, BF16, Parallel(1), workload(concurrency=5000), CAT, Knobs(max_num_seqs=64))
    )
    assert capped.batch == 64


# -- bug 4: unfit where vLLM refuses to start ----------------------------------------------------


def test_llama_8b_at_29k_on_a_24gb_card_is_refused_as_vllm_does() -> None:
    # vLLM issue #10517: chunked prefill off, --max-model-len 29000 on an RTX 3090 -> refused;
    # profiled activations 17.98 - 14.99 = 2.99 GiB; 20000 tokens started (2.07 GiB of activations).
    off = Knobs(chunked_prefill=False, engine_version="V0")  # the issue's log is V0's
    refused = predict_config(
        PlannedConfig(LLAMA_8B, RTX_3090, VLLM, BF16, Parallel(1), workload(context=29000), CAT, off)
    )
    assert not refused.fits
    assert refused.memory.activation_bytes / GIB == pytest.approx(2.99, rel=0.02)
    assert refused.reason is not None and (
        "The model's max seq len (29000) is larger than the maximum number of tokens that can be stored in KV cache"
        in refused.reason
    )
    started = predict_config(
        PlannedConfig(LLAMA_8B, RTX_3090, VLLM, BF16, Parallel(1), workload(context=20000), CAT, off)
    )
    assert started.fits
    assert started.memory.activation_bytes / GIB == pytest.approx(2.07, rel=0.02)
    # With chunked prefill (vLLM's default now) the profiling pass is 2048 tokens and 29k fits.
    assert predict_config(PlannedConfig(LLAMA_8B, RTX_3090, VLLM, BF16, Parallel(1), workload(context=29000), CAT)).fits


@pytest.mark.parametrize(
    ("version", "per_rank_gib"),
    [
        # vLLM PR #10511 (V0): non-torch memory per GPU 1.79 GiB at TP 1, 3.58 GiB at TP 2 (Llama-3-8B, H100).
        ("V0", 1.79),
        # llm-d's V1 logs: 0.14 GiB at TP 1, 0.55 at TP 2 for the same Llama-3.3-70B (engines.json vllm_versions).
        (None, 0.41),
    ],
)
def test_tensor_parallel_charges_every_rank(version: str | None, per_rank_gib: float) -> None:
    two = gpu_device(CAT.gpus["h100-sxm"], 2)
    knobs = Knobs(engine_version=version)
    tp1 = predict_config(PlannedConfig(LLAMA_8B, two, VLLM, BF16, Parallel(1), workload(), CAT, knobs))
    tp2 = predict_config(PlannedConfig(LLAMA_8B, two, VLLM, BF16, Parallel(2), workload(), CAT, knobs))
    assert (tp2.memory.overhead_bytes - tp1.memory.overhead_bytes) / GIB == pytest.approx(per_rank_gib)


def test_fp8_kv_cache_halves_kv_bytes() -> None:
    auto = predict(model="llama-3.1-8b", gpu="h100-sxm", max_model_len=8192)
    fp8 = predict(model="llama-3.1-8b", gpu="h100-sxm", max_model_len=8192, kv_cache_dtype="fp8")
    assert fp8.kv_cache_gib == pytest.approx(auto.kv_cache_gib)
    assert fp8.kv_tokens == pytest.approx(2 * auto.kv_tokens, abs=16)


# -- bug 5: the launch command keeps the engine's batch default -------------------------------------


def test_launch_does_not_pin_max_num_seqs_to_the_planned_batch() -> None:
    p = plan(model="llama-3.1-8b", gpu="l4", context=4096, concurrency=1)
    for o in p.options:
        if o.engine in ("vllm", "sglang", "tensorrt-llm"):
            assert "--max-num-seqs" not in o.launch and "--max-running-requests" not in o.launch
            assert "--max_batch_size" not in o.launch


# -- the predict command --------------------------------------------------------------------------


def test_predict_keys_and_one_code_path_with_recommend() -> None:
    r = predict(model="llama-3.1-8b", gpu="h100-sxm", engine="vllm", format="fp8", max_model_len=8192, concurrency=32)
    assert r.fits and r.reason is None and not r.calibrated
    for key in (
        "weights_gib",
        "kv_cache_gib",
        "kv_tokens",
        "max_concurrent_seqs",
        "ttft_ms",
        "tpot_ms",
        "e2e_ms",
        "output_tok_s",
        "max_output_tok_s",
        "request_s",
        "assumptions",
    ):
        assert getattr(r, key) is not None
    assert r.request_s == pytest.approx(r.output_tok_s / 256)
    p = plan(model="llama-3.1-8b", gpu="h100-sxm", context=8192, concurrency=32)
    same = next(o for o in p.options if (o.engine, o.format, o.tp) == ("vllm", "fp8", 1))
    assert same.prediction.tpot_ms == pytest.approx(r.tpot_ms)
    assert same.prediction.output_tok_s == pytest.approx(r.output_tok_s)
    assert same.memory.kv_tokens == r.kv_tokens


def test_predict_unfit_has_a_reason_and_no_latency() -> None:
    r = predict(model="llama-3.1-70b", gpu="l4", format="bf16", max_model_len=8192)
    assert not r.fits and r.reason and r.ttft_ms is None and r.output_tok_s is None


def test_predict_qps_load_and_saturation() -> None:
    light = predict(model="llama-3.1-8b", gpu="h100-sxm", max_model_len=8192, qps=1)
    assert light.request_s == pytest.approx(1.0) and light.concurrency is None
    heavy = predict(model="llama-3.1-8b", gpu="h100-sxm", max_model_len=8192, qps=10_000)
    assert heavy.output_tok_s == pytest.approx(heavy.max_output_tok_s)
    assert any("queue grows" in n for n in heavy.notes)


def test_predict_refuses_impossible_requests() -> None:
    with pytest.raises(ValueError, match="not both"):
        PredictOptions(model="llama-3.1-8b", concurrency=2, qps=1)
    with pytest.raises(WorkloadError, match="needs 2 GPUs"):
        predict(model="llama-3.1-8b", gpu="h100-sxm", tp=2)
    with pytest.raises(PlannerError, match="does not run"):
        predict(model="llama-3.1-8b", gpu="h100-sxm", engine="vllm", format="gguf-q4_k_m")
    with pytest.raises(ValueError, match="Extra inputs"):
        PredictResult.model_validate({"extra": 1})
    with pytest.raises(ValueError, match="must be below input_tokens 100"):
        PredictOptions(model="llama-3.1-8b", input_tokens=100, cached_input_tokens=100)


def test_a_cached_prompt_start_costs_no_prefill_and_keeps_its_kv() -> None:
    """--cached-input-tokens: a shared prompt start the prefix cache serves shortens prefill, not the KV context."""
    plain = predict(model="llama-3.1-8b", gpu="h100-sxm", input_tokens=2048, concurrency=8)
    cached = predict(model="llama-3.1-8b", gpu="h100-sxm", input_tokens=2048, cached_input_tokens=1536, concurrency=8)
    assert cached.ttft_ms < plain.ttft_ms and cached.tpot_ms <= plain.tpot_ms
    assert (cached.kv_tokens, cached.max_concurrent_seqs) == (plain.kv_tokens, plain.max_concurrent_seqs)
    assert "prefill computes 512" in cached.assumptions["cached_input_tokens"]
    assert "cached_input_tokens" not in plain.assumptions


def test_meta_fp8_checkpoint_is_predicted_when_named_and_never_proposed() -> None:
    """fbgemm-fp8 is the layout of Meta's published FP8 checkpoints: predict takes it, recommend skips it."""
    r = predict(model="llama-3.1-405b", gpu="h100-sxm", gpus=8, tp=8, format="fbgemm-fp8", max_model_len=8192)
    uniform = predict(model="llama-3.1-405b", gpu="h100-sxm", gpus=8, tp=8, format="fp8", max_model_len=8192)
    assert r.fits and r.weights_gib == pytest.approx(56.71, abs=0.01)  # by hand in test_sizing
    assert r.weights_gib > uniform.weights_gib and r.kv_cache_gib < uniform.kv_cache_gib
    p = plan(model="llama-3.1-405b", gpu="h100-sxm", gpus=8, context=8192, concurrency=32)
    assert all(o.format != "fbgemm-fp8" for o in [*p.options, *p.unfit])
    with pytest.raises(WorkloadError, match="layout of dense checkpoints"):
        predict(model="mixtral-8x7b", gpu="h100-sxm", gpus=2, tp=2, format="fbgemm-fp8", max_model_len=8192)


def test_meta_fp8_launch_names_the_published_checkpoint() -> None:
    spec = LaunchSpec(
        engine="vllm", fmt=CAT.formats["fbgemm-fp8"], model=CAT.models["llama-3.1-405b"], device_kind="gpu", tp=8
    )
    lines = launch_command(spec).splitlines()
    repo = "meta-llama/Llama-3.1-405B-Instruct"
    assert lines[0] == f"# FBGEMM_FP8_CHECKPOINT: the published FP8 FFN-only (Meta FBGEMM) checkpoint of {repo}"
    assert lines[-1].startswith('vllm serve "$FBGEMM_FP8_CHECKPOINT" --quantization fbgemm_fp8 ')


def test_cli_predict_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "predict",
        "--model",
        "llama-3.1-8b",
        "--gpu",
        "h100-sxm",
        "--gpus",
        "2",
        "--tp",
        "2",
        "--engine",
        "vllm",
        "--format",
        "awq-int4",
        "--kv-cache-dtype",
        "fp8",
        "--max-model-len",
        "8192",
        "--input-tokens",
        "512",
        "--output-tokens",
        "128",
        "--concurrency",
        "16",
        "--no-enable-chunked-prefill",
        "--json",
    ]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tp"] == 2 and data["format"].startswith("AWQ") and data["fits"] is True
    assert data["assumptions"]["chunked_prefill"] is False and data["assumptions"]["kv_cache_dtype_bytes"] == 1
    assert main(["predict", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--qps", "2", "--concurrency", "2"]) == 2
    assert "not both" in capsys.readouterr().err


def test_bundled_engine_on_a_gpu_prices_decode_as_its_cuda_graphs_run() -> None:
    """The engine replays decode-only passes from CUDA graphs on a GPU (engine/run/cuda_graph.py,
    engine/batch/decode_graphs.py) and runs passes with prompt tokens eagerly: a decode step pays the
    in-graph cost of its ops, a prompt pass their launches. Held to our H200 run (docs/BENCHMARKS.md):
    int4 decode replayed as a graph at 547.4 tok/s, prefill of 256 tokens at 24,336 tok/s (10.5 ms)."""
    r = predict(model="smollm2-135m", gpu="h200", engine="bundled", format="bundled-int4", input_tokens=256)
    engine = CAT.engines["bundled"]
    ops = CAT.models["smollm2-135m"].n_layers * engine.dispatch_ops_per_layer
    assert r.assumptions["step_overhead_ms"] == pytest.approx(ops * engine.gpu_graph_op_us / 1e3)
    eager_extra = ops * (engine.gpu_op_overhead_us - engine.gpu_graph_op_us) / 1e3
    assert r.assumptions["prompt_pass_overhead_ms"] == pytest.approx(eager_extra)
    assert 1000 / r.tpot_ms == pytest.approx(547.4, rel=0.05)
    assert r.ttft_ms == pytest.approx(10.5, rel=0.5)
    cpu = replace(RTX_3090, name="a CPU", kind="cpu", op_overhead_s=5e-6)  # no graphs: one dispatch cost for both
    model = CAT.models["smollm2-135m"]
    assert dispatch_overhead_s(engine, cpu, model, decode_only=True) == dispatch_overhead_s(engine, cpu, model)
