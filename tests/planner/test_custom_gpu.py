"""`--gpu custom:mem=24GiB,bw=936GB/s,bf16=71TF`: good text parses into a GpuSpec, bad text says what to fix."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from planner.catalog import load_catalog
from planner.custom_gpu import EXAMPLE, format_custom_gpu, is_custom, parse_custom_gpu
from planner.devices import resolve_device
from planner.entrypoints import make_plan
from planner.errors import CustomGpuError
from planner.workload import RecommendOptions


def test_the_example_is_an_rtx_3090() -> None:
    spec = parse_custom_gpu(EXAMPLE)
    catalog_3090 = load_catalog().gpus["rtx-3090"]
    assert spec.memory_bytes == 24 * 2**30  # the card's nominal size; the catalog keeps what CUDA reports
    assert catalog_3090.memory_bytes == pytest.approx(spec.memory_bytes, rel=0.02)
    assert spec.bandwidth_bytes_s == 936e9 == catalog_3090.bandwidth_bytes_s
    assert spec.flops == {"fp16": 71e12, "bf16": 71e12, "fp8": None, "int8": None}
    assert (spec.vendor, spec.compute_capability, spec.interconnect) == ("nvidia", None, "pcie")
    assert spec.name == "custom GPU (24 GiB, 936 GB/s, 71 TF BF16)"
    assert spec.source == f"given inline: {EXAMPLE}"


@pytest.mark.parametrize(
    ("text", "memory_bytes", "bandwidth_bytes_s", "flops"),
    [
        ("custom:mem=80GB,bw=3.35TB/s,bf16=989TFLOPS", 80e9, 3.35e12, {"bf16": 989e12}),
        (
            " Custom: MEM=48gib , BW=864gb/s , BF16=362tf , FP8=733TF , INT8=733TOPS ",
            48 * 2**30,
            864e9,
            {"bf16": 362e12, "fp8": 733e12, "int8": 733e12},
        ),
        ("custom:bf16=.5TF,bw=100GB/s,mem=8GiB,vendor=AMD", 8 * 2**30, 100e9, {"bf16": 0.5e12}),
    ],
)
def test_units_order_case_and_spaces(text: str, memory_bytes: float, bandwidth_bytes_s: float, flops: dict) -> None:
    spec = parse_custom_gpu(text)
    assert (spec.memory_bytes, spec.bandwidth_bytes_s) == (int(memory_bytes), bandwidth_bytes_s)
    assert {k: v for k, v in spec.flops.items() if v is not None} == {"fp16": flops["bf16"], **flops}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("custom", "custom GPU needs mem=, bw= and bf16= (missing mem=, bw=, bf16=); got 'custom', e.g. " + EXAMPLE),
        ("custom:mem=24GiB", "custom GPU needs mem=, bw= and bf16= (missing bw=, bf16=); got 'custom:mem=24GiB'"),
        ("custom:mem=24,bw=936GB/s,bf16=71TF", "custom GPU: mem=24 needs a unit: GiB or GB (e.g. "),
        ("custom:mem=24GiB,bw=936,bf16=71TF", "custom GPU: bw=936 needs a unit: GB/s or TB/s"),
        ("custom:mem=24GiB,bw=936GB/s,bf16=71", "custom GPU: bf16=71 needs a unit: TF or TFLOPS"),
        ("custom:mem=24GiB,bw=936GB/s,bf16=71PF", "custom GPU: bf16=71PF has unit 'pf'; use TF or TFLOPS"),
        ("custom:mem=24GiB,bw=936GB/s,bf16=71TOPS", "custom GPU: bf16=71TOPS has unit 'tops'"),
        ("custom:mem=24MB,bw=936GB/s,bf16=71TF", "custom GPU: mem=24MB has unit 'mb'; use GiB or GB"),
        ("custom:mem=24GiB,bw=936MB/s,bf16=71TF", "custom GPU: bw=936MB/s has unit 'mb/s'; use GB/s or TB/s"),
        ("custom:mem=24TB,bw=936GB/s,bf16=71TF", "custom GPU: mem=24TB has unit 'tb'"),
        ("custom:mem=24000GiB,bw=936GB/s,bf16=71TF", "custom GPU: mem=24000GiB is outside the plausible range"),
        ("custom:mem=24GiB,bw=936TB/s,bf16=71TF", "custom GPU: bw=936TB/s is outside the plausible range"),
        ("custom:mem=24GiB,bw=936GB/s,bf16=0TF", "custom GPU: bf16=0TF is outside the plausible range"),
        ("custom:mem=-24GiB,bw=936GB/s,bf16=71TF", "custom GPU: mem='-24GiB' is not a number with a unit"),
        ("custom:mem=twentyGiB,bw=936GB/s,bf16=71TF", "custom GPU: mem='twentyGiB' is not a number with a unit"),
        ("custom:mem=24GiB,bw=936GB/s,bf16=71TF,fp4=1TF", "custom GPU: unknown field 'fp4' (known: mem, bw, bf16,"),
        ("custom:mem=24GiB,mem=48GiB,bw=936GB/s,bf16=71TF", "custom GPU: mem= is given twice"),
        ("custom:mem=24GiB,bw936GB/s,bf16=71TF", "custom GPU: 'bw936GB/s' is not key=value"),
        ("custom:mem=24GiB,bw=,bf16=71TF", "custom GPU: 'bw=' is not key=value"),
        ("custom:mem=24GiB,bw=936GB/s,bf16=71TF,vendor=intel", "custom GPU: vendor=intel is not one of nvidia, amd"),
    ],
)
def test_bad_text_says_what_to_fix(text: str, message: str) -> None:
    with pytest.raises(CustomGpuError) as caught:
        parse_custom_gpu(text)
    assert str(caught.value).startswith(message)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "custom"),
    [("custom:mem=1GiB", True), ("CUSTOM", True), ("h100-sxm", False), ("customer", False), ("cpu", False)],
)
def test_is_custom(text: str, custom: bool) -> None:
    assert is_custom(text) is custom


def test_format_round_trips_through_the_parser() -> None:
    assert format_custom_gpu(24, 936, 71) == EXAMPLE
    text = format_custom_gpu(48, 864, 362.05, fp8_tflops=733, int8_tops=733)
    assert text == "custom:mem=48GiB,bw=864GB/s,bf16=362.05TF,fp8=733TF,int8=733TOPS"
    assert parse_custom_gpu(text).flops["fp8"] == 733e12


def test_a_custom_gpu_plans_like_its_catalog_twin() -> None:
    """vLLM BF16 on the inline RTX 3090 gets the catalog 3090's figures. Formats differ where the catalog knows
    more: its compute capability lets FP8 run weight-only, while the inline card, with no fp8=, cannot."""

    def plan(gpu: str):  # noqa: ANN202
        return make_plan(RecommendOptions(model="llama-3.1-8b", gpu=gpu, gpus=2, context=4096, concurrency=8))

    custom, catalog = plan(EXAMPLE), plan("rtx-3090")
    assert custom.device.count == 2 and custom.device.gpu_id == "custom"
    pick = lambda p: next(o for o in p.options if (o.engine, o.format) == ("vllm", "bf16"))  # noqa: E731
    mine, twin = pick(custom), pick(catalog)
    assert (mine.tp, mine.replicas) == (twin.tp, twin.replicas)
    assert mine.prediction.tpot_ms == pytest.approx(twin.prediction.tpot_ms)
    assert mine.prediction.ttft_ms == pytest.approx(twin.prediction.ttft_ms)
    reasons = {(u.engine, u.format): u.reason for u in custom.unfit}
    assert reasons[("vllm", "fp8")].startswith("custom GPU (24 GiB, 936 GB/s, 71 TF BF16) has no FP8 tensor rate")
    assert any(o.format == "fp8" for o in catalog.options)


def test_fp8_given_inline_unlocks_fp8() -> None:
    device = resolve_device(EXAMPLE + ",fp8=142TF", 1, load_catalog())
    assert device.flops["fp8"] == 142e12
    plan = make_plan(RecommendOptions(model="llama-3.1-8b", gpu=EXAMPLE + ",fp8=142TF", context=4096))
    assert any(o.format == "fp8" for o in plan.options)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True, timeout=120)


def test_cli_plans_for_a_custom_gpu() -> None:
    done = _cli("recommend", "--model", "llama-3.1-8b", "--gpu", EXAMPLE, "--context", "4096", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert json.dumps(plan).count("custom GPU (24 GiB, 936 GB/s, 71 TF BF16)") >= 1
    assert plan["options"], "an 8B model fits a 24 GiB card at 4k context"


def test_cli_bad_custom_gpu_is_one_line_and_exit_2() -> None:
    done = _cli("recommend", "--model", "llama-3.1-8b", "--gpu", "custom:mem=24GiB,bw=936GB/s")
    assert done.returncode == 2
    assert done.stderr == (
        "error: custom GPU needs mem=, bw= and bf16= (missing bf16=); got 'custom:mem=24GiB,bw=936GB/s', "
        f"e.g. {EXAMPLE}\n"
    )
    assert done.stdout == ""
