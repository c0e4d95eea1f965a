"""NVIDIA GPUs through NVML (`nvidia-ml-py`, imported as `pynvml`).

`probe()` never raises. On a machine without the NVML library, without a driver,
or without permission it returns no GPUs and says why in `NvmlReport.reason`;
a field NVML cannot give for one device (`NotSupported`) is None, never 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NvmlGpu:
    """One NVIDIA device as NVML reports it."""

    index: int
    name: str
    total_memory_bytes: int | None
    used_memory_bytes: int | None
    compute_capability: str | None


@dataclass(frozen=True, slots=True)
class NvmlReport:
    """What NVML said: `status` is ok, unavailable (no library/driver) or error."""

    status: str
    reason: str | None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    gpus: tuple[NvmlGpu, ...] = ()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cuda_version_text(v: int) -> str:
    """NVML's integer CUDA driver version as text: 12040 -> '12.4'."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def _field(pynvml: Any, call: Callable[[], T]) -> T | None:
    """One per-device field; a device that does not support it gives None."""
    try:
        return call()
    except pynvml.NVMLError_NotSupported:
        return None


def _device(pynvml: Any, index: int) -> NvmlGpu:
    h = pynvml.nvmlDeviceGetHandleByIndex(index)
    mem = _field(pynvml, lambda: pynvml.nvmlDeviceGetMemoryInfo(h))
    cc = _field(pynvml, lambda: pynvml.nvmlDeviceGetCudaComputeCapability(h))
    return NvmlGpu(
        index=index,
        name=_text(pynvml.nvmlDeviceGetName(h)),
        total_memory_bytes=int(mem.total) if mem is not None else None,
        used_memory_bytes=int(mem.used) if mem is not None else None,
        compute_capability=f"{cc[0]}.{cc[1]}" if cc is not None else None,
    )


def probe(loader: Callable[[], Any] | None = None) -> NvmlReport:
    """Ask NVML for the driver and every GPU. `loader` returns the pynvml module (tests pass a fake)."""
    try:
        pynvml = loader() if loader is not None else __import__("pynvml")
    except ImportError as exc:
        return NvmlReport("unavailable", f"nvidia-ml-py is not installed ({exc}); pip install 'nvidia-ml-py>=13'")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        why = f"NVML could not start: {type(exc).__name__}: {exc}"
        if isinstance(exc, pynvml.NVMLError_LibraryNotFound):
            why += " (no NVIDIA driver library on this machine, so no NVIDIA GPU can be used)"
        return NvmlReport("unavailable", why)
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = cuda_version_text(int(pynvml.nvmlSystemGetCudaDriverVersion()))
        gpus = tuple(_device(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount()))
        report = NvmlReport("ok", None if gpus else "NVML works but reports no GPU", driver, cuda, gpus)
    except pynvml.NVMLError as exc:
        report = NvmlReport("error", f"NVML query failed: {type(exc).__name__}: {exc}")
    try:
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        note = f"nvmlShutdown failed: {exc}"
        report = NvmlReport(
            report.status,
            f"{report.reason}; {note}" if report.reason else note,
            report.driver_version,
            report.cuda_driver_version,
            report.gpus,
        )
    return report
