"""Recommendation ranking for CPU-only, one L4, one H100, 8 x H100 (70B, 405B); bad input; the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from planner.__main__ import main
from planner.catalog import load_catalog
from planner.cpu_probe import CpuMeasurement
from planner.entrypoints import make_plan, predict_one
from planner.errors import PlannerError, UnknownNameError, WorkloadError
from planner.hardware import detect
from planner.predict_io import PredictOptions
from planner.recommend import Plan, PlanOption
from planner.sizing import GIB
from planner.slo_targets import slo_choices
from planner.workload import RecommendOptions

VERSIONS = load_catalog().engines_file.vllm_versions

# A fixed CPU so that CPU rankings do not depend on this machine's load.
FIXED_CPU = CpuMeasurement(
    threads=2,
    copy_bytes_s=10e9,
    triad_bytes_s=12e9,
    bandwidth_curve=((24 * 2**20, 30e9), (384 * 2**20, 12e9)),
    fp32_flops=100e9,
    bf16_flops=20e9,
    op_overhead_s=3e-6,
    int4_gemv_weights_s=10e9,
    int8_gemv_weights_s=20e9,
    int4_gemm_weights_s=25e9,
    int8_gemm_weights_s=25e9,
)


def plan(**kw: object) -> Plan:
    return make_plan(RecommendOptions(**kw), hw=detect(), measure=lambda: FIXED_CPU)


def top(p: Plan, n: int) -> list[tuple[str, str]]:
    return [(o.engine, o.format) for o in p.options[:n]]


def test_cpu_only_8b_is_gguf_on_llama_cpp() -> None:
    p = plan(model="llama-3.1-8b", gpu="cpu", context=4096, concurrency=1)
    assert p.device.kind == "cpu" and p.device.measured
    assert {o.engine for o in p.options} <= {"llama.cpp", "bundled"}
    assert top(p, 1) == [("llama.cpp", "q4_k_m")]
    assert not p.options[0].meets_slo  # 8B on two cores cannot make chat's 50 ms TPOT
    assert any("need a GPU" in n for n in p.notes)
    assert p.options[0].launch.splitlines()[-1] == (
        'llama-server -m "$GGUF_FILE" -c 4096 -np 1 -t 2 --host 127.0.0.1 --port 8080'
    )


def test_cpu_only_small_model_meets_chat() -> None:
    p = plan(model="smollm2-135m", gpu="cpu", context=2048, concurrency=1, input_tokens=64, output_tokens=64)
    assert p.options[0].meets_slo
    bundled = p.bundled_option()
    assert bundled is not None and bundled.launch == (
        f"python -m engine serve --quant {bundled.format.removeprefix('bundled-')} --device cpu --max-model-len 2048 "
        "--max-num-seqs 1 --host 127.0.0.1 --port 8000"
    )


def test_one_l4_8b_is_fp8() -> None:
    # MLPerf's 8B server limits (p99 TTFT 2 s, TPOT 100 ms): the default chat's 50 ms TPOT is out of an L4's reach
    p = plan(model="llama-3.1-8b", gpu="l4", context=8192, concurrency=32, slo="mlperf-llama3.1-8b-server")
    assert top(p, 2) == [("tensorrt-llm", "fp8"), ("vllm", "fp8")]
    assert p.options[0].meets_slo and p.options[0].tp == 1
    bf16 = next(o for o in p.options if (o.engine, o.format) == ("vllm", "bf16"))
    assert bf16.prediction.batch < 32 and not bf16.meets_slo  # 16 GB of weights leave little KV on 24 GB


def test_one_h100_8b_is_fp8_with_tensorrt_or_vllm() -> None:
    p = plan(model="llama-3.1-8b", gpu="h100-sxm", context=8192, concurrency=32, slo="chat")
    assert top(p, 3) == [("tensorrt-llm", "fp8"), ("vllm", "fp8"), ("sglang", "fp8")]
    assert all(o.meets_slo for o in p.options[:8])
    vllm = p.options[1]
    assert vllm.launch.splitlines() == [
        "# KV cache planned for vLLM 0.11.1 (planner default: no engine version given): V1 engine, "
        "v1-pytorch-sampler rule",
        "vllm serve meta-llama/Llama-3.1-8B-Instruct --quantization fp8 --max-model-len 8192 "
        "--gpu-memory-utilization 0.9 --tensor-parallel-size 1",
    ]
    # TensorRT-LLM's fitted efficiencies and its FP8 checkpoint's FP8 KV cache put it ahead
    assert "ranked 2" in vllm.why[0] and "below #1" in vllm.why[0]
    near_lossless = [o.quality for o in p.options if o.meets_slo][:6]
    assert set(near_lossless) <= {"none", "negligible"}


def test_one_t4_cannot_run_bf16_or_fp8() -> None:
    p = plan(model="llama-3.1-8b", gpu="t4", context=4096, concurrency=8)
    reasons = {(o.engine, o.format): o.reason for o in p.unfit}
    assert reasons[("vllm", "fp8")] == "FP8 (W8A8) on vLLM needs compute capability >= 8.0; NVIDIA T4 has 7.5"
    assert reasons[("vllm", "bf16")] == "NVIDIA T4 has no BF16: use FP16"
    assert p.options[0].format in ("awq", "gptq")


def test_8x_h100_70b() -> None:
    p = plan(model="llama-3.1-70b", gpu="h100-sxm", gpus=8, context=8192, concurrency=64)
    assert top(p, 2) == [("tensorrt-llm", "fp8"), ("vllm", "fp8")]
    bf16 = next(o for o in p.options if (o.engine, o.format) == ("vllm", "bf16"))
    assert bf16.tp >= 2 and bf16.tp * bf16.replicas <= 8  # 141 GB of weights need at least two GPUs
    one = plan(model="llama-3.1-70b", gpu="h100-sxm", gpus=1, context=8192, concurrency=64)
    reasons = {(o.engine, o.format): o.reason for o in one.unfit}
    # 65.7 GiB of weights per GPU at TP 2 leave 71.26 - 65.7 - 0.54 non-torch - 4.77 GiB for the default
    # release's sampler pass (1024 rows x 128,256 x 38 B + hidden states, engines.json vllm_versions) = 0.24 GiB
    # of KV: less than one 8192-token sequence (1.25 GiB at TP 2), so TP 4.
    assert reasons[("vllm", "bf16")] == "needs 4 GPUs with tensor parallel (TP 4); you have 1"


def test_8x_h100_405b_needs_fp8_or_two_nodes() -> None:
    p = plan(
        model="llama-3.1-405b", gpu="h100-sxm", gpus=8, context=8192, concurrency=32, slo="mlperf-llama3.1-405b-server"
    )
    assert top(p, 1) == [("tensorrt-llm", "fp8")] and p.options[0].tp == 8
    reasons = {(o.engine, o.format): o.reason for o in p.unfit}
    assert reasons[("vllm-ray", "bf16")] == ("needs 2 nodes x 8 GPUs = 16 GPUs (vLLM + Ray: TP 8 x PP 2); you have 8")
    two_nodes = plan(
        model="llama-3.1-405b", gpu="h100-sxm", gpus=16, context=8192, concurrency=32, slo="mlperf-llama3.1-405b-server"
    )
    ray = next(o for o in two_nodes.options if o.engine == "vllm-ray")
    assert (ray.format, ray.tp, ray.pp) == ("bf16", 8, 2)
    assert "ray start --head" in ray.launch
    assert ray.launch.splitlines()[-1].endswith(
        "--tensor-parallel-size 8 --pipeline-parallel-size 2 --distributed-executor-backend ray"
    )


def test_nothing_fits() -> None:
    p = plan(model="llama-3.1-405b", gpu="t4", context=4096, concurrency=1)
    assert p.options == [] and p.best is None
    assert p.unfit and all(o.reason for o in p.unfit)
    # Weights alone overflow the card: the reason says what is missing, not a negative KV budget.
    memory = [o.reason for o in p.unfit if o.reason and o.reason.startswith("does not fit")]
    assert memory and all("more than the device has before any KV cache" in r for r in memory)
    assert not any("leaves -" in r for r in memory)


def test_unknown_model_and_impossible_workload() -> None:
    with pytest.raises(UnknownNameError, match=r"did you mean llama-3.1-8b"):
        plan(model="llama-8b", gpu="h100-sxm")
    with pytest.raises(WorkloadError, match="context 200000 exceeds Llama-3.1-8B-Instruct's maximum of 131072"):
        plan(model="llama-3.1-8b", gpu="h100-sxm", context=200_000)
    with pytest.raises(ValueError, match="input_tokens \\+ output_tokens = 9000 exceeds context 8192"):
        RecommendOptions(model="llama-3.1-8b", input_tokens=8000, output_tokens=1000)
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        RecommendOptions(model="llama-3.1-8b", gpu_count=2)


def test_cli_recommend_text(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "recommend",
        "--model",
        "llama-3.1-8b",
        "--gpu",
        "h100-sxm",
        "--context",
        "8192",
        "--concurrency",
        "32",
        "--slo",
        "chat",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Model         Llama-3.1-8B-Instruct (8.03B params)"
    assert out[3] == "SLO           chat: TTFT p95 500 ms, TPOT p99 50 ms, E2E p99 10000 ms"
    assert out[6].split()[:5] == ["1", "TensorRT-LLM", "FP8", "(W8A8)", "TP1"]
    assert (
        "    vllm serve meta-llama/Llama-3.1-8B-Instruct --quantization fp8 --max-model-len 8192 "
        "--gpu-memory-utilization 0.9 --tensor-parallel-size 1" in out
    )


def test_cli_recommend_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", "--model", "mixtral-8x7b", "--gpu", "a100-80", "--gpus", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["params_active"] == 12_879_925_248
    assert data["options"][0]["rank"] == 1 and data["options"][0]["launch"]
    assert any(o["engine"] == "tensorrt-llm" and "8.9" in o["reason"] for o in data["unfit"])


@pytest.mark.parametrize(
    ("argv", "code", "line"),
    [
        (
            ["--model", "llama-8b", "--gpu", "h100-sxm"],
            1,
            "error: unknown model 'llama-8b': did you mean llama-3.1-8b, llama-3.2-3b, llama-3.2-1b?",
        ),
        (
            ["--model", "llama-3.1-8b", "--gpu", "h100"],
            1,
            "error: unknown GPU 'h100': did you mean h200, h100-sxm, h100-nvl, h100-pcie?",
        ),
        (
            ["--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--context", "200000"],
            1,
            "error: context 200000 exceeds Llama-3.1-8B-Instruct's maximum of 131072 tokens: "
            "use --context 131072 or less",
        ),
        (
            ["--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--input-tokens", "8000", "--output-tokens", "1000"],
            2,
            "error: input_tokens + output_tokens = 9000 exceeds context 8192: raise the context or shorten the request",
        ),
        (
            ["--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--engine-version", "latest"],
            1,
            f"error: engine version 'latest': give a vLLM release (e.g. {VERSIONS.default}) or an engine "
            "generation (V0 or V1)",
        ),
        (
            ["--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--slo", "fast"],
            1,
            "error: unknown SLO profile 'fast': did you mean chat?",
        ),
        (
            ["--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--slo", "zzz"],
            1,
            "error: unknown SLO profile 'zzz': known: " + ", ".join(sorted(slo_choices())),
        ),
    ],
)
def test_cli_bad_input_is_one_line(argv: list[str], code: int, line: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", *argv]) == code
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [line] and captured.out == ""


def test_the_bandwidth_note_explains_the_two_working_sets() -> None:
    """Cache-sized copies are the faster ones on a quiet machine; if they read slower, the note says why."""
    quiet = replace(FIXED_CPU, bandwidth_curve=((24 * 2**20, 150e9), (384 * 2**20, 42e9)))
    busy = replace(FIXED_CPU, bandwidth_curve=((24 * 2**20, 20e9), (384 * 2**20, 40e9)))
    assert quiet.bandwidth_note().startswith("24 MiB fits in the CPU's cache, 384 MiB does not: 150.0 GB/s is cache")
    assert "main memory's, the one decode depends on" in quiet.bandwidth_note()
    assert busy.bandwidth_note().startswith("The 24 MiB figure (20.0 GB/s) read lower than main memory's (40.0 GB/s)")
    assert "Measure again on a quiet machine" in busy.bandwidth_note()
    assert replace(FIXED_CPU, bandwidth_curve=((2**20, 1e9),)).bandwidth_note() is None


def _vllm_bf16(options: list[PlanOption]) -> PlanOption:
    return next(o for o in options if (o.engine, o.format) == ("vllm", "bf16"))


def test_the_vllm_release_decides_whether_70b_bf16_fits_two_h100s() -> None:
    """Recommend plans the release asked for, as predict does. Under 0.11.1's rule (PyTorch's sort in the
    profile's sampler pass) Llama-3.1-70B BF16 at TP 2 leaves less KV than one 8192-token sequence, so two
    H100s are not enough (TP 4); under 0.10.1.1's (FlashInfer's sampler) the same split fits."""
    ask = {"model": "llama-3.1-70b", "gpu": "h100-sxm", "gpus": 2, "context": 8192, "concurrency": 1}
    default, older = plan(**ask), plan(**ask, engine_version="0.10.1.1")
    unfit = _vllm_bf16(default.unfit)
    fits = _vllm_bf16(older.options)
    assert unfit.reason == "needs 4 GPUs with tensor parallel (TP 4); you have 2"
    assert unfit.tp == fits.tp == 2
    new, old = unfit.memory, fits.memory
    assert new is not None and old is not None
    # The two rules differ in the sampler pass only: rows x vocabulary x the bytes per logit each names.
    rules = {r.id: r for r in VERSIONS.regimes}
    per_logit = (
        rules["v1-pytorch-sampler"].sampler_bytes_per_logit - rules["v1-flashinfer-sampler"].sampler_bytes_per_logit
    )
    rows = min(int(fits.assumptions["max_num_seqs"]), int(fits.assumptions["max_num_batched_tokens"]))
    assert new.activation_bytes - old.activation_bytes == rows * default.model.vocab_size * per_logit
    assert (new.weights_bytes, new.overhead_bytes) == (old.weights_bytes, old.overhead_bytes)
    assert old.kv_budget_bytes - new.kv_budget_bytes == new.activation_bytes - old.activation_bytes
    assert new.max_seqs_at_context == 0 < old.max_seqs_at_context
    # one code path: predict, asked the same split and release, computes the same memory
    ask_one = {"model": "llama-3.1-70b", "gpu": "h100-sxm", "gpus": 2, "tp": 2, "max_model_len": 8192}
    one = predict_one(PredictOptions(**ask_one, engine_version="0.10.1.1"), hw=detect())
    assert one.fits and one.kv_cache_gib == round(old.kv_budget_bytes / GIB, 3)
    assert one.assumptions["vllm_memory_version"] == fits.assumptions["vllm_memory_version"]
    # the launch command and the notes say which release the KV cache was planned for; vLLM has no flag for it
    label = "vLLM 0.10.1.1: V1 engine, v1-flashinfer-sampler rule"
    assert fits.assumptions["vllm_memory_version"] == label
    assert fits.launch.splitlines()[-2] == f"# KV cache planned for {label}"
    assert "--engine-version" not in fits.launch.splitlines()[-1]
    assert any(n.startswith(f"vLLM options: KV cache planned for {label}") for n in older.notes)
    assert any(n.startswith("vLLM options:") and "planner default" in n for n in default.notes)


def test_a_bad_engine_version_is_refused_even_where_vllm_does_not_run() -> None:
    with pytest.raises(PlannerError, match="engine version 'newest': give a vLLM release"):
        plan(model="smollm2-135m", gpu="cpu", context=2048, engine_version="newest")
    cpu = plan(model="smollm2-135m", gpu="cpu", context=2048, engine_version="V0")
    assert not any(n.startswith("vLLM options:") for n in cpu.notes)  # no vLLM on a CPU: nothing to plan for


def test_recommend_takes_predicts_vllm_and_tp_settings_for_every_option_they_apply_to() -> None:
    """The sampler and a logged CUDA-graph estimate reach the vLLM options only; the TP transport every TP
    option; each as predict plans it."""
    ask = {"model": "llama-3.1-8b", "gpu": "h100-sxm", "gpus": 2, "context": 8192, "concurrency": 1}
    base = plan(**ask)
    pinned = plan(**ask, tp_transport="host", vllm_sampler="flashinfer", cuda_graph_reserve_gib=1.5)
    before = {(o.engine, o.format, o.tp, o.pp): o for o in base.options}
    vllm_seen = other_seen = 0
    for o in pinned.options:
        b = before[(o.engine, o.format, o.tp, o.pp)]
        assert o.memory is not None and b.memory is not None
        if o.engine == "vllm" and o.tp == 2:
            assert "v1-flashinfer-sampler's sampler pass" in o.assumptions["vllm_memory_version"]
            assert "charged as given (--cuda-graph-reserve-gib" in o.assumptions["vllm_cuda_graph_reserve"]
            assert o.assumptions["tp_transport"].startswith("host: ")
            vllm_seen += 1
        elif o.engine != "vllm" and o.tp == 2:
            assert "vllm_cuda_graph_reserve" not in o.assumptions and o.assumptions["tp_transport"].startswith("host")
            assert o.memory.overhead_bytes < b.memory.overhead_bytes  # no per-rank buffers without P2P
            other_seen += 1
    assert vllm_seen and other_seen
    assert any("CUDA-graph reserve 1.5 GiB charged as given" in n for n in pinned.notes)
    one = predict_one(
        PredictOptions(
            model="llama-3.1-8b",
            gpu="h100-sxm",
            gpus=2,
            tp=2,
            max_model_len=8192,
            tp_transport="host",
            vllm_sampler="flashinfer",
            cuda_graph_reserve_gib=1.5,
        ),
        hw=detect(),
    )
    (vllm_tp2,) = [o for o in pinned.options if o.engine == "vllm" and o.tp == 2 and o.format == "bf16"]
    assert vllm_tp2.memory is not None and one.kv_cache_gib == round(vllm_tp2.memory.kv_budget_bytes / GIB, 3)


def test_recommend_plans_a_cached_prompt_start_as_predict_does() -> None:
    """--cached-input-tokens reaches every option through predict's code path: less prefill, the same KV."""
    kw = {"model": "llama-3.1-8b", "gpu": "h100-sxm", "input_tokens": 2048, "concurrency": 8}
    plain, cached = plan(**kw), plan(**kw, cached_input_tokens=1536)
    before = {(o.engine, o.format, o.tp, o.pp): o for o in plain.options}
    compared = 0
    for o in cached.options:
        twin = before[(o.engine, o.format, o.tp, o.pp)]
        if o.memory is not None and twin.memory is not None:
            assert o.memory.kv_tokens == twin.memory.kv_tokens
        if o.prediction is not None and twin.prediction is not None:
            assert o.prediction.ttft_ms < twin.prediction.ttft_ms
            compared += 1
    assert compared > 0
    with pytest.raises(ValueError, match="must be below the prompt's 2048 tokens"):
        RecommendOptions(**kw, cached_input_tokens=2048)
