"""vLLM's memory rule by engine version (planner/vllm_memory.py, engines.json vllm_versions): each release's
profile worked by hand, and how a version as users and published sources write it picks the rule."""

from __future__ import annotations

import json

import pytest

from planner.__main__ import main
from planner.catalog import load_catalog
from planner.entrypoints import predict_one
from planner.errors import PlannerError
from planner.hardware import detect
from planner.predict import Knobs, PlannedConfig, predict_config
from planner.predict_io import PredictOptions
from planner.published import load_published
from planner.roofline import Parallel, gpu_device
from planner.sizing import GIB
from planner.slo_targets import slo_targets
from planner.vllm_memory import parse_release, resolve_vllm_memory, version_choices
from planner.workload import Workload

CAT = load_catalog()
TABLE = CAT.engines_file.vllm_versions
VLLM = CAT.engines["vllm"]
BF16 = CAT.formats["bf16"]
LLAMA_8B = CAT.models["llama-3.1-8b"]
QWEN_7B = CAT.models["qwen2.5-7b"]


def workload(context: int) -> Workload:
    return Workload(context, 1, 1024, 256, slo_targets("chat"))


def test_sampler_bytes_per_logit_add_up_from_the_named_buffers() -> None:
    rules = {r.id: r for r in TABLE.regimes}
    # V0: the fp32 logits alone
    assert rules["v0"].sampler_bytes_per_logit == 4
    # FlashInfer: 16-bit logits 2 + fp32 copy 4 + top-k masked logits 4 + probabilities 4
    assert rules["v1-flashinfer-sampler"].sampler_bytes_per_logit == 14
    # PyTorch sort: 2 + 4 + sorted values 4 + int64 indices 8 + the sort's int64 index input 8 + CUB's third
    # keys (4) and values (8) buffers
    assert rules["v1-pytorch-sampler"].sampler_bytes_per_logit == 38
    assert all(b.source for r in TABLE.regimes for b in r.sampler_buffers)


def test_v1_default_release_by_hand_llama_8b_on_h100() -> None:
    """The llm-d run's conditions (Llama-3.1-8B BF16, one H100, utilization 0.9, max_model_len 16000), planned
    with the default release's rule; vLLM logged 14.99 + 4.76 + 0.13 and 51.38 GiB of KV."""
    h100 = gpu_device(CAT.gpus["h100-sxm"], 1)
    cp = predict_config(PlannedConfig(LLAMA_8B, h100, VLLM, BF16, Parallel(1), workload(16000), CAT))
    mem = cp.memory
    assert cp.limits.max_num_seqs == 1024 and cp.limits.max_num_batched_tokens == 8192  # >= 70 GiB, not an A100
    assert mem.device_bytes == 85_018_542_080  # 81,080 MiB: the 79.18 GiB CUDA reports
    assert mem.budget_bytes == 76_516_687_872  # x 0.9
    assert mem.weights_bytes == 16_060_522_496
    # sampler pass: 1024 rows x 128,256 vocabulary x 38 B = 4,990,697,472, plus the profile pass's hidden
    # states 8192 x 4096 x 2 B = 67,108,864; the MLP pass (905,969,664) is smaller
    assert mem.activation_bytes == 4_990_697_472 + 67_108_864 == 5_057_806_336
    assert mem.overhead_bytes == 139_586_437  # 0.13 GiB non-torch
    # 76,516,687,872 - 16,060,522,496 - 5,057,806,336 - 139,586,437
    assert mem.kv_budget_bytes == 55_258_772_603
    assert mem.kv_budget_bytes / GIB == pytest.approx(51.46, abs=0.005)
    assert "planner default" in str(cp.assumptions["vllm_memory_version"])


def test_v1_flashinfer_release_by_hand_qwen_7b_on_a100() -> None:
    """vLLM 0.10.1.1 (its log: 'Using FlashInfer for top-p & top-k sampling.'), Qwen2-7B on one A100 80GB at
    utilization 0.25; vLLM logged 14.2488 GiB of weights and 5.01 GiB / 93,872 tokens of KV."""
    a100 = gpu_device(CAT.gpus["a100-80"], 1)
    knobs = Knobs(gpu_memory_utilization=0.25, engine_version="0.10.1.1")
    cp = predict_config(PlannedConfig(QWEN_7B, a100, VLLM, BF16, Parallel(1), workload(16384), CAT, knobs))
    mem = cp.memory
    assert cp.limits.max_num_seqs == 256 and cp.limits.max_num_batched_tokens == 2048  # an A100: the small defaults
    assert mem.device_bytes == 84_987_084_800  # 81,050 MiB: the 79.15 GiB CUDA reports
    assert mem.budget_bytes == 21_246_771_200  # x 0.25
    assert mem.weights_bytes == 15_231_233_024
    # sampler pass: 256 x 152,064 x 14 B = 544,997,376 + hidden states 2048 x 3584 x 2 B = 14,680,064;
    # the MLP pass is 2048 x (3 x 18944 + 3 x 3584) x 2 B = 276,824,064
    assert mem.activation_bytes == 559_677_440
    assert mem.overhead_bytes == 139_586_437
    assert mem.kv_budget_bytes == 21_246_771_200 - 15_231_233_024 - 559_677_440 - 139_586_437 == 5_316_274_299
    # 28 layers x 2 x 4 KV heads x 128 x 2 B = 57,344 B per token, 16-token blocks
    assert mem.num_blocks == 5_316_274_299 // (16 * 57_344) == 5_794
    assert mem.kv_tokens == 92_704
    assert cp.assumptions["vllm_memory_version"] == "vLLM 0.10.1.1: V1 engine, v1-flashinfer-sampler rule"


def test_v0_rule_by_hand_llama_8b_tp2_on_h100() -> None:
    """V0's rule: 2% of VRAM plus 1.79 GiB per rank under TP, and the fp32 logits as the only sampler term."""
    two = gpu_device(CAT.gpus["h100-sxm"], 2)
    cp = predict_config(
        PlannedConfig(LLAMA_8B, two, VLLM, BF16, Parallel(2), workload(8192), CAT, Knobs(engine_version="V0"))
    )
    mem = cp.memory
    assert mem.overhead_bytes == 1_700_370_841 + 1_921_997_864  # 2% of 85,018,542,080 + 1.79 GiB
    # max(MLP 8192 x (3 x 14336 / 2 + 3 x 4096) x 2 = 553,648,128, logits 1024 x 128,256 x 4 = 525,336,576)
    assert mem.activation_bytes == 553_648_128
    assert mem.kv_budget_bytes == 76_516_687_872 - 16_060_522_496 // 2 - 553_648_128 - 3_622_368_705


def test_the_sampler_is_what_moves_between_v1_releases() -> None:
    """Same configuration, three rules: V1's non-torch charge is a small fixed figure, and the sampler's peak
    orders the KV budgets (V0's fp32 logits < FlashInfer < PyTorch's sort) on a 1024-row H100."""
    h100 = gpu_device(CAT.gpus["h100-sxm"], 1)

    def plan(version: str) -> tuple[int, int]:
        cp = predict_config(
            PlannedConfig(LLAMA_8B, h100, VLLM, BF16, Parallel(1), workload(8192), CAT, Knobs(engine_version=version))
        )
        return cp.memory.activation_bytes, cp.memory.overhead_bytes

    v0, flashinfer, pytorch = plan("0.6.4"), plan("0.11.0"), plan("0.11.1")
    assert v0[0] < flashinfer[0] < pytorch[0]
    assert flashinfer[0] == 1024 * 128_256 * 14 + 8192 * 4096 * 2
    assert flashinfer[1] == pytorch[1] == int(0.13 * GIB) < v0[1]


def test_an_install_without_flashinfer_plans_the_sort_on_its_own_release() -> None:
    """--vllm-sampler pytorch on 0.10.1.1 (its log: 'FlashInfer is not available. Falling back to the PyTorch-native
    implementation'): the sort's sampler pass, everything else the release's own."""
    a100 = gpu_device(CAT.gpus["a100-80"], 1)

    def plan(sampler: str | None) -> tuple[int, int, str]:
        knobs = Knobs(gpu_memory_utilization=0.25, engine_version="0.10.1.1", vllm_sampler=sampler)
        cp = predict_config(PlannedConfig(QWEN_7B, a100, VLLM, BF16, Parallel(1), workload(16384), CAT, knobs))
        return cp.memory.activation_bytes, cp.memory.overhead_bytes, str(cp.assumptions["vllm_memory_version"])

    flashinfer, fallback = plan(None), plan("pytorch")
    assert plan("flashinfer") == flashinfer  # the release's own sampler: nothing swapped
    # 256 rows x 152,064 vocabulary x 38 B + the held hidden states 2048 x 3584 x 2 B
    assert fallback[0] == 256 * 152_064 * 38 + 2048 * 3584 * 2 > flashinfer[0]
    assert fallback[1] == flashinfer[1]  # non-torch memory stays the release's
    assert fallback[2] == "vLLM 0.10.1.1: V1 engine, v1-flashinfer-sampler rule, with v1-pytorch-sampler's sampler pass"
    with pytest.raises(PlannerError, match="V0 engine has one sampler"):
        predict_config(
            PlannedConfig(
                QWEN_7B,
                a100,
                VLLM,
                BF16,
                Parallel(1),
                workload(4096),
                CAT,
                Knobs(engine_version="V0", vllm_sampler="pytorch"),
            ),
        )
    with pytest.raises(PlannerError, match="--vllm-sampler is a vLLM setting"):
        predict_one(
            PredictOptions(model="llama-3.1-8b", gpu="h100-sxm", engine="sglang", vllm_sampler="pytorch"), hw=detect()
        )


def test_tp_without_peer_to_peer_charges_no_per_rank_buffers(capsys: pytest.CaptureFixture[str]) -> None:
    """Two A100 80GB without P2P (vLLM: 'Custom allreduce is disabled because your platform lacks GPU P2P
    capability'), 0.10.1.1, utilization 0.25: vLLM logged 12.02 GiB of KV per GPU; the per-rank charge of 0.41 GiB
    (NVLink logs) would leave 11.63."""
    args = ["predict", "--model", "qwen2.5-7b", "--gpu", "a100-80", "--gpus", "2", "--tp", "2", "--engine-version"]
    args += ["0.10.1.1", "--gpu-memory-utilization", "0.25", "--max-model-len", "16384", "--json"]
    assert main(args) == 0
    p2p = json.loads(capsys.readouterr().out)
    assert main([*args, "--tp-transport", "host"]) == 0
    host = json.loads(capsys.readouterr().out)
    assert host["kv_cache_gib"] - p2p["kv_cache_gib"] == pytest.approx(0.41, abs=0.002)
    assert host["kv_cache_gib"] == pytest.approx(12.02, abs=0.03)
    assert host["assumptions"]["tp_transport"].startswith("host: ") and p2p["assumptions"]["tp_transport"].startswith(
        "p2p: "
    )
    one = ["predict", "--model", "qwen2.5-7b", "--gpu", "a100-80", "--tp-transport", "host", "--json"]
    assert main(one) == 0 and "tp_transport" not in json.loads(capsys.readouterr().out)["assumptions"]  # no group
    assert main([*args, "--tp-transport", "nvlink"]) == 2
    assert "tp_transport: Input should be 'auto', 'p2p' or 'host'" in capsys.readouterr().err


def test_auto_follows_the_catalog_where_a_card_has_no_peer_to_peer(capsys: pytest.CaptureFixture[str]) -> None:
    """Two RTX 4090s cannot reach each other's memory (the driver refuses peer access): the default plans them
    as host transport and says why; --tp-transport p2p still overrides, and NVLink cards stay p2p."""
    assert CAT.gpus["rtx-4090"].peer_to_peer is False and CAT.gpus["h100-sxm"].peer_to_peer is True
    args = ["predict", "--model", "llama-3.1-8b", "--gpu", "rtx-4090", "--gpus", "2", "--tp", "2", "--json"]
    assert main(args) == 0
    auto = json.loads(capsys.readouterr().out)
    assert main([*args, "--tp-transport", "p2p"]) == 0
    forced = json.loads(capsys.readouterr().out)
    assert auto["assumptions"]["tp_transport"].endswith("(auto: the NVIDIA GeForce RTX 4090 has no peer-to-peer)")
    assert auto["kv_cache_gib"] > forced["kv_cache_gib"]
    h100 = ["predict", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--gpus", "2", "--tp", "2", "--json"]
    assert main(h100) == 0
    assert json.loads(capsys.readouterr().out)["assumptions"]["tp_transport"].startswith("p2p: ")


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("0.10.1.1", "v1-flashinfer-sampler"),
        ("v0.11.0", "v1-flashinfer-sampler"),  # 'v0.' is a release, not the V0 engine
        ("0.11.1", "v1-pytorch-sampler"),
        ("0.23.0", "v1-pytorch-sampler"),  # past the verified releases: the sort's larger peak
        ("0.6.4", "v0"),
        ("V0 engine: main with PR #2031 (December 2023)", "v0"),
        ("0.8.5 V0", "v0"),  # VLLM_USE_V1=0 on a release that ships V1
        ("V1", "v1-pytorch-sampler"),  # the generation alone: the default release's rule
    ],
)
def test_a_version_as_written_picks_its_rule(text: str, rule: str) -> None:
    resolved = resolve_vllm_memory(TABLE, text)
    assert resolved.regime.id == rule and resolved.given


def test_no_version_plans_the_default_release_and_says_so() -> None:
    resolved = resolve_vllm_memory(TABLE, None)
    assert not resolved.given and resolved.version == TABLE.default
    assert resolved.regime.engine == "V1" and "planner default" in resolved.label()


def test_unreadable_version_is_an_error() -> None:
    with pytest.raises(PlannerError, match="give a vLLM release"):
        resolve_vllm_memory(TABLE, "main with PR #2031")
    assert parse_release("0.11") == (0, 11, 0, 0) < parse_release("0.11.1")


def test_every_published_vllm_kv_point_names_a_version_the_planner_reads() -> None:
    """The V0-era start-up points say V0; the rest read as releases or fall to the labelled default."""
    for p in load_published().points:
        c = p.conditions
        if c.engine != "vllm" or (p.measured.kv_cache_gib is None and p.measured.gpu_blocks is None):
            continue
        resolved = resolve_vllm_memory(TABLE, c.engine_version)
        if p.id.startswith(("vllm-10517", "vllm-2031")):
            assert resolved.regime.engine == "V0", p.id
        else:
            assert resolved.regime.engine == "V1", p.id


def test_predict_takes_the_version_and_other_engines_ignore_it(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["predict", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--max-model-len", "8192", "--json"]
    assert main([*args, "--engine-version", "0.10.1.1"]) == 0
    flashinfer = json.loads(capsys.readouterr().out)
    assert flashinfer["assumptions"]["vllm_memory_version"] == "vLLM 0.10.1.1: V1 engine, v1-flashinfer-sampler rule"
    assert main(args) == 0
    default = json.loads(capsys.readouterr().out)
    assert flashinfer["kv_cache_gib"] > default["kv_cache_gib"]  # FlashInfer's smaller sampler peak
    sglang = predict_one(
        PredictOptions(model="llama-3.1-8b", gpu="h100-sxm", engine="sglang", engine_version="0.4"), hw=detect()
    )
    assert "vllm_memory_version" not in sglang.assumptions


def test_the_pickers_choices_are_one_version_per_rule_default_first() -> None:
    """The Plan page's vLLM versions: every rule of engines.json once, newest first, each value resolving to
    the rule its label names, the default release first and named as the default."""
    choices = version_choices(TABLE)
    assert list(choices)[0] == TABLE.default
    assert choices[TABLE.default].endswith(f"(planner default: {TABLE.default})")
    rules = [resolve_vllm_memory(TABLE, value).regime.id for value in choices]
    assert rules == [r.id for r in reversed(TABLE.regimes)]
    assert all(f"{rule} rule" in label for rule, label in zip(rules, choices.values(), strict=True))


@pytest.mark.parametrize(
    ("text", "reserves"),
    [("0.27.1", True), ("v0.21.0", True), ("0.20.2", False), ("0.11.1", False), (None, False), ("V1", False)],
)
def test_releases_from_0_21_reserve_cuda_graph_memory_and_the_plan_says_so(text: str | None, reserves: bool) -> None:
    """vLLM 0.21.0 and later take an estimate of CUDA-graph memory out of the KV cache by default. No public rule
    sizes it, so it is not charged: the assumption, the launch line and the notes name it and the switch."""
    resolved = resolve_vllm_memory(TABLE, text)
    assert (resolved.graph_reserve is not None) is reserves
    if reserves:
        note = resolved.graph_reserve.note()
        assert "VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=0" in note and "0.17-4.38 GiB" in note
        assert "VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=0 gives this KV cache" in resolved.planned_for()
    else:
        assert "CUDA-graph" not in resolved.planned_for()


def test_a_prediction_for_a_recent_release_lists_the_cuda_graph_reserve(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["predict", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--max-model-len", "8192", "--json"]
    assert main([*args, "--engine-version", "0.27.1"]) == 0
    recent = json.loads(capsys.readouterr().out)
    assert main([*args, "--engine-version", "0.11.1"]) == 0
    older = json.loads(capsys.readouterr().out)
    assert "not planned here" in recent["assumptions"]["vllm_cuda_graph_reserve"]
    assert "vllm_cuda_graph_reserve" not in older["assumptions"]
    assert recent["kv_cache_gib"] == older["kv_cache_gib"]  # the same memory rule: the reserve is named, not charged


def test_a_cuda_graph_estimate_read_off_a_log_is_charged(capsys: pytest.CaptureFixture[str]) -> None:
    """`--cuda-graph-reserve-gib X` takes X out of the KV cache, as vLLM >= 0.21 takes its estimate; the plan says
    it was given, not found; other engines refuse it."""
    args = ["predict", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--max-model-len", "8192", "--json"]
    args += ["--engine-version", "0.27.1"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*args, "--cuda-graph-reserve-gib", "1.94"]) == 0
    charged = json.loads(capsys.readouterr().out)
    assert plain["kv_cache_gib"] - charged["kv_cache_gib"] == pytest.approx(1.94, abs=0.002)
    assert "1.94 GiB per GPU charged as given" in charged["assumptions"]["vllm_cuda_graph_reserve"]
    rule = resolve_vllm_memory(TABLE, "0.27.1")
    assert "charged" not in rule.planned_for()
    with pytest.raises(PlannerError, match="is a vLLM setting"):
        predict_one(
            PredictOptions(model="llama-3.1-8b", gpu="h100-sxm", engine="sglang", cuda_graph_reserve_gib=1.0),
            hw=detect(),
        )
