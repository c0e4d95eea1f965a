"""Turn a `--gpu` choice into a roofline Device: a catalog GPU, a custom one given inline
(`custom:mem=24GiB,bw=936GB/s,bf16=71TF`), this CPU (measured), or whatever `detect()` finds on
this machine (`detected`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from planner.catalog import Catalog, GpuSpec
from planner.custom_gpu import EXAMPLE, is_custom, parse_custom_gpu
from planner.errors import PlannerError
from planner.hardware import Hardware, detect
from planner.roofline import Device, gpu_device

if TYPE_CHECKING:  # cpu_probe imports torch; only the CPU path needs it at run time
    from planner.cpu_probe import CpuMeasurement

CPU_CHOICES = ("cpu", "this-cpu")
CUSTOM_CHOICE = "custom"


def device_choices(catalog: Catalog) -> dict[str, str]:
    """Every `--gpu` choice a form offers, id to label: this machine, this CPU, each catalog GPU the planner
    can plan for, then a custom GPU (the form asks for its figures)."""
    return (
        {"detected": "this machine (detected)", "cpu": "this CPU"}
        | {gpu_id: spec.name for gpu_id, spec in catalog.gpus.items() if not spec.unsupported}
        | {CUSTOM_CHOICE: "custom GPU (enter its figures)"}
    )


def cpu_device(hw: Hardware, m: CpuMeasurement) -> Device:
    """This CPU: RAM available for weights + KV, bandwidth and FLOP/s as measured just now."""
    if hw.ram_available_bytes is None:
        raise PlannerError("cannot plan for this CPU: available RAM could not be read (see `python -m planner detect`)")
    return Device(
        name=hw.cpu_model,
        kind="cpu",
        vendor="cpu",
        memory_bytes=hw.ram_available_bytes,
        bandwidth_bytes_s=m.bandwidth_bytes_s,
        flops={"fp32": m.fp32_flops, "bf16": m.bf16_flops},
        op_overhead_s=m.op_overhead_s,
        measured=m.describe(),
        threads=m.threads,
        bandwidth_curve=m.bandwidth_curve,
        kernel_weights_s=m.kernel_weights_s,
    )


def _names(pattern: str, gpu_name: str) -> bool:
    """`pattern` appears in `gpu_name` as whole words: "NVIDIA L4" is not in "NVIDIA L40S"."""
    return re.search(rf"(?<![a-z0-9]){re.escape(pattern.lower())}(?![a-z0-9])", gpu_name.lower()) is not None


def match_gpu(name: str, catalog: Catalog) -> GpuSpec | None:
    """The catalog entry whose NVML name pattern appears, as whole words, in a detected GPU's name; the
    longest pattern wins ("A100-PCIE-40GB" over a generic "A100 40GB")."""
    hits = [(len(p), spec) for spec in catalog.gpus.values() for p in spec.nvml_names if _names(p, name)]
    return max(hits, key=lambda hit: hit[0])[1] if hits else None


def plannable(spec: GpuSpec) -> GpuSpec:
    """`spec`, unless no engine the planner models runs on it: then the catalog's reason, as an error."""
    if spec.unsupported:
        raise PlannerError(f"cannot plan for {spec.name}: {spec.unsupported}")
    return spec


def resolve_device(
    choice: str,
    count: int,
    catalog: Catalog,
    price_per_hour: float | None = None,
    hw: Hardware | None = None,
    measure: Callable[[], CpuMeasurement] | None = None,
) -> Device:
    """`choice` is a catalog GPU id/name, `custom:...`, `cpu`, or `detected` (this machine's GPUs, else its CPU)."""
    if is_custom(choice):
        return gpu_device(parse_custom_gpu(choice), count, price_per_hour)
    wanted = choice.strip().lower()
    if wanted in CPU_CHOICES or wanted == "detected":
        hw = hw or detect()
        if wanted == "detected" and hw.gpus:
            spec = match_gpu(hw.gpus[0].name, catalog)
            if spec is None:
                raise PlannerError(
                    f"detected GPU {hw.gpus[0].name!r} is not in planner/data/gpus.json: add it there "
                    f"(memory, bandwidth, TFLOPS, source), pass --gpu with a catalog id, or give its figures inline: "
                    f"--gpu {EXAMPLE}"
                )
            return gpu_device(plannable(spec), len(hw.gpus), price_per_hour)
        if measure is None:
            from planner.cpu_probe import measure as measure_cpu

            measure = measure_cpu
        return cpu_device(hw, measure())
    return gpu_device(plannable(catalog.gpu(choice)), count, price_per_hour)
