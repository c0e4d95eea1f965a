"""The GPU catalog: every figure is stated in its entry's source, figures sit in sane ranges, and every
GPU either plans or says why it cannot."""

from __future__ import annotations

import re

import pytest

from planner.catalog import GpuEntry, load_catalog
from planner.devices import device_choices, match_gpu, resolve_device
from planner.entrypoints import make_plan
from planner.errors import PlannerError
from planner.workload import RecommendOptions

ENTRIES = load_catalog().gpus_file.gpus
WANTED = {"rtx-3090", "rtx-a6000", "l40", "a100-40-pcie", "b200", "mi250x", "gaudi2", "h100-nvl"}
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _numbers(text: str) -> list[float]:
    return [float(n.replace(",", "")) for n in _NUMBER.findall(text)]


def _cited(figure: float, numbers: list[float]) -> bool:
    """The figure appears as printed, or in the next unit up (TB/s for GB/s, PFLOPS for TFLOPS), to 0.5%."""
    return any(abs(n - figure) <= 0.005 * figure or abs(n * 1000 - figure) <= 0.005 * figure for n in numbers)


def test_the_cards_people_run_are_in_the_catalog() -> None:
    assert {g.id for g in ENTRIES} >= WANTED


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.id)
def test_every_figure_is_in_its_source(entry: GpuEntry) -> None:
    numbers = _numbers(entry.source)
    figures = {"memory_gb": entry.memory_gb, "bandwidth_gb_s": entry.bandwidth_gb_s}
    figures |= {f"tflops.{k}": v for k, v in entry.tflops.model_dump().items() if v is not None}
    missing = [f"{name}={value:g}" for name, value in figures.items() if not _cited(value, numbers)]
    assert not missing, f"{entry.id}: source does not state {missing}"
    assert "http" in entry.source or "." in entry.source.split(":")[0] or "REFERENCE.md" in entry.source


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.id)
def test_figures_are_in_sane_ranges(entry: GpuEntry) -> None:
    assert 8 <= entry.memory_gb <= 300
    assert 200 <= entry.bandwidth_gb_s <= 10_000
    # the driver reports about the printed capacity: printed GB read as GB or GiB, less a reserve of up to 8%
    assert 0.92 * entry.memory_gb * 1e9 / 2**20 <= entry.usable_mib <= entry.memory_gb * 1024 * 1.02
    rates = entry.tflops
    sixteen = rates.bf16 or rates.fp16
    assert sixteen is not None and 50 <= sixteen <= 5_000, "every GPU here has a 16-bit tensor rate"
    if rates.fp8 is not None:
        assert rates.fp8 == pytest.approx(2 * sixteen, rel=0.02), "FP8 is twice the 16-bit rate on every such GPU"
    if rates.int8 is not None:
        # 2x the 16-bit rate (L40S: 362.05 and 733 as printed); 4x on GeForce, whose FP32-accumulate rate is halved
        assert sixteen <= rates.int8 <= 4.05 * sixteen
    # a sparse figure mistaken for dense would show as FLOPs per byte far above any real part's ~600
    assert sixteen * 1e12 / (entry.bandwidth_gb_s * 1e9) < 600


def test_nvidia_entries_carry_a_compute_capability_and_others_do_not() -> None:
    for entry in ENTRIES:
        assert (entry.compute_capability is not None) == (entry.vendor == "nvidia"), entry.id


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.id)
def test_every_gpu_plans_or_says_why_not(entry: GpuEntry) -> None:
    opts = RecommendOptions(model="llama-3.1-8b", gpu=entry.id, context=4096, concurrency=4)
    if entry.unsupported:
        with pytest.raises(PlannerError, match=f"^cannot plan for {re.escape(entry.name)}: "):
            make_plan(opts)
        assert entry.id not in device_choices(load_catalog())
        return
    plan = make_plan(opts)
    assert plan.options, f"nothing fits an 8B model on one {entry.name}"
    assert plan.device.memory_bytes == entry.usable_mib * 2**20


def test_mi250x_is_one_gcd_on_amd_engines_without_fp8() -> None:
    plan = make_plan(RecommendOptions(model="llama-3.1-8b", gpu="mi250x", context=4096, concurrency=4))
    assert {o.engine for o in plan.options} <= {"vllm", "sglang", "llama.cpp"}
    fp8 = [u for u in plan.unfit if u.format == "fp8"]
    assert fp8 and all("has no FP8 tensor rate" in (u.reason or "") for u in fp8)


@pytest.mark.parametrize(
    ("nvml_name", "gpu_id"),
    [
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA L40", "l40"),
        ("NVIDIA A100-PCIE-40GB", "a100-40-pcie"),
        ("NVIDIA A100-SXM4-40GB", "a100-40"),
        ("NVIDIA GeForce RTX 3090", "rtx-3090"),
        ("NVIDIA RTX A6000", "rtx-a6000"),
        ("NVIDIA B200", "b200"),
    ],
)
def test_detected_names_match_the_longest_pattern(nvml_name: str, gpu_id: str) -> None:
    spec = match_gpu(nvml_name, load_catalog())
    assert spec is not None and spec.id == gpu_id


def test_gaudi_is_refused_with_its_reason() -> None:
    with pytest.raises(PlannerError, match="vllm-gaudi"):
        resolve_device("gaudi2", 1, load_catalog())
