"""Turn a `--gpu` choice into a roofline Device: a catalog GPU, this CPU (measured), or
whatever `detect()` finds on this machine (`detected`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from planner.catalog import Catalog, GpuSpec
from planner.errors import PlannerError
from planner.hardware import Hardware, detect
from planner.roofline import Device, gpu_device

if TYPE_CHECKING:  # cpu_probe imports torch; only the CPU path needs it at run time
    from planner.cpu_probe import CpuMeasurement

CPU_CHOICES = ("cpu", "this-cpu")


def device_choices(catalog: Catalog) -> dict[str, str]:
    """Every `--gpu` choice a form offers, id to label: this machine, this CPU, then each catalog GPU."""
    return {"detected": "this machine (detected)", "cpu": "this CPU"} | {
        gpu_id: spec.name for gpu_id, spec in catalog.gpus.items()
    }


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


def match_gpu(name: str, catalog: Catalog) -> GpuSpec | None:
    """The catalog entry whose NVML name pattern appears in a detected GPU's name."""
    lowered = name.lower()
    for spec in catalog.gpus.values():
        if any(p.lower() in lowered for p in spec.nvml_names):
            return spec
    return None


def resolve_device(
    choice: str,
    count: int,
    catalog: Catalog,
    price_per_hour: float | None = None,
    hw: Hardware | None = None,
    measure: Callable[[], CpuMeasurement] | None = None,
) -> Device:
    """`choice` is a catalog GPU id/name, `cpu`, or `detected` (this machine's GPUs, else its CPU)."""
    wanted = choice.strip().lower()
    if wanted in CPU_CHOICES or wanted == "detected":
        hw = hw or detect()
        if wanted == "detected" and hw.gpus:
            spec = match_gpu(hw.gpus[0].name, catalog)
            if spec is None:
                raise PlannerError(
                    f"detected GPU {hw.gpus[0].name!r} is not in planner/data/gpus.json: add it there "
                    f"(memory, bandwidth, TFLOPS, source) or pass --gpu with a catalog id"
                )
            return gpu_device(spec, len(hw.gpus), price_per_hour)
        if measure is None:
            from planner.cpu_probe import measure as measure_cpu

            measure = measure_cpu
        return cpu_device(hw, measure())
    return gpu_device(catalog.gpu(choice), count, price_per_hour)
