"""The weight-only kernels' time against row count: measured at 1, 2, 4, 16 and 64 rows by the CPU
probe, read off that curve for a batched decode step (one row per sequence, the head once per
sequence) and for a prompt (the head once), and kept by a calibration that pins the probe."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import get_args

import pytest

from planner.calibration import CpuFigures, cpu_figures, pinned_measurement
from planner.catalog import CpuKernel, load_catalog
from planner.cpu_probe import CURVE_ROWS, GEMM_ROWS, KERNEL_MAKERS, measure
from planner.devices import cpu_device
from planner.hardware import detect
from planner.roofline import decode_step, kernel_call_s, kernel_s, prefill
from tests.planner.test_recommend import FIXED_CPU

CAT = load_catalog()
# A CPU whose int4 kernel serves 2 rows for 1.2x one row's time and 4 rows for 2.6x, and whose FLOP/s
# are so high that only the kernels bound a step's compute.
CURVED = replace(
    FIXED_CPU,
    fp32_flops=1e15,
    bf16_flops=1e15,
    int4_gemm_weights_s=100e9,
    q8_0_gemv_weights_s=20e9,
    q8_0_gemm_weights_s=20e9,
    kernel_curve=(("int4", 2, 2 / 1.2 * 10e9), ("int4", 4, 4 / 2.6 * 10e9), ("int4", 16, 50e9)),
)


def test_a_call_is_read_linearly_between_the_measured_row_counts() -> None:
    rates = CURVED.kernel_weights_s
    one = kernel_call_s(rates, "int4", 1e9, 1)
    assert one == pytest.approx(0.1)  # 1e9 weights at 10e9 weight-rows/s
    assert kernel_call_s(rates, "int4", 1e9, 2) == pytest.approx(1.2 * one)
    assert kernel_call_s(rates, "int4", 1e9, 3) == pytest.approx(1.9 * one)  # halfway from 1.2x to 2.6x
    assert kernel_call_s(rates, "int4", 1e9, 4) == pytest.approx(2.6 * one)
    assert kernel_call_s(rates, "int4", 1e9, 16) == pytest.approx(16e9 / 50e9)
    # beyond the largest measured count: that count's per-row rate
    assert kernel_call_s(rates, "int4", 1e9, 2 * GEMM_ROWS) == pytest.approx(2 * GEMM_ROWS * 1e9 / 100e9)
    assert kernel_call_s(rates, "fp8", 1e9, 4) == 0.0  # not measured: no kernel time
    assert kernel_call_s({"int4": 10e9}, "int4", 1e9, 8) == pytest.approx(0.8)  # one point: proportional


def test_a_batched_decode_step_costs_the_kernels_at_its_row_count() -> None:
    model = CAT.model("smollm2-135m")
    fmt = CAT.format("bundled-int4")
    device = cpu_device(detect(), CURVED)
    body = model.params_total - model.embedding_params
    for batch in (1, 2, 3, 16):
        expected = kernel_call_s(device.kernel_weights_s, "int4", body, batch) + kernel_call_s(
            device.kernel_weights_s, "q8_0", model.head_params, batch
        )
        step = decode_step(model, fmt, device, batch, context=256)
        assert step.compute_s == pytest.approx(expected)
    one, two, three = (decode_step(model, fmt, device, b, context=256).compute_s for b in (1, 2, 3))
    assert one < two < three and three - two > 2 * (two - one)  # torch's kernel at 3 rows costs more per row
    # a prompt's head runs once, for its last token
    assert kernel_s(model, fmt, device, 128) == pytest.approx(
        kernel_call_s(device.kernel_weights_s, "int4", body, 128) + model.head_params / 20e9
    )
    assert prefill(model, fmt, device, 128).compute_s == pytest.approx(kernel_s(model, fmt, device, 128))


def test_a_calibration_keeps_the_curve_and_an_older_one_loads_without_it() -> None:
    fig = cpu_figures(CURVED)
    assert pinned_measurement(CpuFigures.model_validate(json.loads(fig.model_dump_json()))) == CURVED
    old = json.loads(fig.model_dump_json())
    del old["kernel_curve"]
    assert pinned_measurement(CpuFigures.model_validate(old)) == replace(CURVED, kernel_curve=())


def test_the_probe_times_the_engines_kernels_at_each_row_count() -> None:
    m = measure.__wrapped__(1, 2)  # uncached, two repeats: the rates' shape, not their accuracy
    measured = {(kernel, rows) for kernel, rows, rate in m.kernel_curve if rate > 0}
    assert {("int4", rows) for rows in CURVE_ROWS} <= measured
    assert {("q8_0", rows) for rows in CURVE_ROWS} <= measured
    assert {(dense, rows) for dense in ("fp32", "bf16") for rows in CURVE_ROWS} <= measured
    assert {"fp32", "bf16", f"fp32@{GEMM_ROWS}", f"bf16@{GEMM_ROWS}"} <= set(m.kernel_weights_s)
    assert all(f"int4@{rows}" in m.kernel_weights_s for rows in (*CURVE_ROWS, GEMM_ROWS))
    assert "fp8@2" not in m.kernel_weights_s  # its time is its dequantization, at any row count
    assert "int4@2" in m.describe()


def test_a_fitted_flop_efficiency_scales_the_kernels_time_too() -> None:
    """On a CPU every compute rate is the probe's reading, the kernels' included: a calibration's FLOP
    efficiency scales a kernel-bound pass as it scales a FLOP-bound one. Were the kernel curve a fixed
    floor, a probe taken in a slow moment would put prompt passes above what the fit could reach, and
    the fitted values would follow the probe's moment instead of the runs (on the same step logs, a probe
    that read the int4 GEMM at 114 G weight-rows/s gave a pass fit of RMS 0.054 with no prompt fixed cost,
    against 0.031 at 134-151; scaled, 0.031 at all of them, docs/BENCHMARKS.md)."""
    model = CAT.model("smollm2-135m")
    fmt = CAT.format("bundled-int4")
    device = cpu_device(detect(), CURVED)  # FLOP/s so high that only the kernels bound compute
    for efficiency in (0.5, 2.0):
        assert prefill(model, fmt, device, 142, flops_efficiency=efficiency).compute_s == pytest.approx(
            prefill(model, fmt, device, 142).compute_s / efficiency
        )
        assert decode_step(model, fmt, device, 4, 256, flops_efficiency=efficiency).compute_s == pytest.approx(
            decode_step(model, fmt, device, 4, 256).compute_s / efficiency
        )


def test_every_kernel_a_format_can_name_is_one_the_probe_times() -> None:
    assert set(get_args(CpuKernel)) == set(KERNEL_MAKERS)
    named = {k for f in CAT.formats.values() for k in (f.cpu_kernel, f.cpu_embedding_kernel) if k is not None}
    assert named <= set(KERNEL_MAKERS)


def test_dense_formats_decode_at_the_probes_gemv_rate_not_at_the_copy_bandwidth() -> None:
    """fp32 and bf16 run torch's dense linear, whose one-row GEMV on few cores streams the weights well below
    the copy bandwidth (15.7 against 42 GB/s for fp32 on 2 EPYC cores): a step is priced at that measured rate,
    and a slower rate makes a slower step (planned at +114% of a measured fp32 decode before, 2026-12-08)."""
    model = CAT.models["smollm2-135m"]
    fast = replace(FIXED_CPU, fp32_gemv_weights_s=100e9, bf16_gemv_weights_s=100e9)
    slow = replace(FIXED_CPU, fp32_gemv_weights_s=2e9, bf16_gemv_weights_s=2e9)  # slower than its 12 GB/s copies
    for fmt_id in ("bundled-fp32", "bundled-bf16"):
        fmt = CAT.formats[fmt_id]
        weights = model.params_total - model.embedding_params + model.head_params
        step = decode_step(model, fmt, cpu_device(detect(), slow), 1, 128)
        assert step.compute_s == pytest.approx(weights / 2e9)  # every linear at the measured one-row rate
        assert step.bound == "compute"
        assert step.seconds > decode_step(model, fmt, cpu_device(detect(), fast), 1, 128).seconds
