"""What this machine offers for inference: CPU, ISA features, memory, disk, NVIDIA GPUs, torch backends.

`detect()` never raises: a probe that fails leaves its field as None (not measured),
never as 0, and says why in `notes`. NVIDIA GPUs come from NVML (driver, memory,
compute capability); without NVML (no driver, as on a CPU-only machine) the reason
is kept in `nvml_reason` and torch's CUDA view, if any, is used instead.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from planner import nvml

# cpuinfo flag -> our name. ARM kernels report NEON as "asimd" (64-bit) or "neon" (32-bit).
ISA_FLAGS: dict[str, tuple[str, ...]] = {
    "avx2": ("avx2",),
    "avx512f": ("avx512f",),
    "avx512_bf16": ("avx512_bf16",),
    "avx512_vnni": ("avx512_vnni",),
    "amx_tile": ("amx_tile",),
    "neon": ("neon", "asimd"),
}


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One accelerator, from NVML when it works, else from torch (`source`)."""

    index: int
    name: str
    total_memory_bytes: int | None
    used_memory_bytes: int | None = None
    compute_capability: str | None = None
    source: str = "torch"


@dataclass(frozen=True, slots=True)
class Hardware:
    """A snapshot of the machine; None means the probe could not measure it."""

    cpu_model: str
    physical_cores: int | None
    logical_cores: int | None
    isa: tuple[str, ...]
    ram_total_bytes: int | None
    ram_available_bytes: int | None
    disk_path: str
    disk_free_bytes: int | None
    os: str
    torch_version: str | None
    cuda_available: bool
    cuda_device_count: int
    mps_available: bool
    gpus: tuple[GpuInfo, ...] = ()
    nvml_status: str = "unavailable"
    nvml_reason: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    def to_dict(self) -> dict:
        return asdict(self)


def cache_dir() -> Path:
    """Where converted weights are cached: $PREFLIGHT_CACHE_DIR, else the user cache folder."""
    env = os.environ.get("PREFLIGHT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("preflight"))


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def _cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _isa(cpuinfo: str) -> tuple[str, ...]:
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if not flags and platform.machine().lower() in ("arm64", "aarch64"):
        flags.add("asimd")  # every AArch64 CPU (Apple silicon included) has NEON
    return tuple(name for name, aliases in ISA_FLAGS.items() if flags.intersection(aliases))


def _free_bytes(path: Path) -> int | None:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def _torch_backends(notes: list[str]) -> dict:
    found: dict = {"torch_version": None, "cuda_available": False, "cuda_device_count": 0, "mps_available": False}
    try:
        import torch
    except ImportError as exc:
        notes.append(f"torch not importable: {exc}")
        return found
    found["torch_version"] = torch.__version__
    try:
        found["cuda_available"] = bool(torch.cuda.is_available())
        found["cuda_device_count"] = torch.cuda.device_count() if found["cuda_available"] else 0
        gpus = []
        for i in range(found["cuda_device_count"]):
            props = torch.cuda.get_device_properties(i)
            cc = f"{props.major}.{props.minor}"
            gpus.append(GpuInfo(i, props.name, int(props.total_memory), None, cc, "torch"))
        found["gpus"] = tuple(gpus)
    except Exception as exc:  # a broken driver must not break detection
        notes.append(f"CUDA probe failed: {type(exc).__name__}: {exc}")
    mps = getattr(torch.backends, "mps", None)
    found["mps_available"] = bool(mps is not None and mps.is_available())
    return found


def _nvml_fields(torch_gpus: tuple[GpuInfo, ...], nvml_loader: object = None) -> dict:
    """GPUs and driver from NVML; torch's list stays when NVML has none to give."""
    report = nvml.probe(nvml_loader)  # type: ignore[arg-type]
    gpus = tuple(
        GpuInfo(g.index, g.name, g.total_memory_bytes, g.used_memory_bytes, g.compute_capability, "nvml")
        for g in report.gpus
    )
    return {
        "gpus": gpus or torch_gpus,
        "nvml_status": report.status,
        "nvml_reason": report.reason,
        "driver_version": report.driver_version,
        "cuda_driver_version": report.cuda_driver_version,
    }


def detect(nvml_loader: object = None) -> Hardware:
    """Probe the machine. Never raises; failed probes are None and explained in `notes`.

    `nvml_loader` returns the pynvml module; tests pass one that fails or fakes devices.
    """
    notes: list[str] = []
    cpuinfo = _read_cpuinfo()
    try:
        mem = psutil.virtual_memory()
        ram_total, ram_available = int(mem.total), int(mem.available)
    except Exception as exc:
        notes.append(f"RAM probe failed: {exc}")
        ram_total = ram_available = None
    try:
        physical, logical = psutil.cpu_count(logical=False), psutil.cpu_count(logical=True)
    except Exception as exc:
        notes.append(f"core count probe failed: {exc}")
        physical = logical = None
    disk = cache_dir()
    free = _free_bytes(disk)
    if free is None:
        notes.append(f"disk free space unreadable at {disk}")
    backends = _torch_backends(notes)
    gpu_fields = _nvml_fields(backends.pop("gpus", ()), nvml_loader)
    return Hardware(
        cpu_model=_cpu_model(cpuinfo),
        physical_cores=physical,
        logical_cores=logical,
        isa=_isa(cpuinfo),
        ram_total_bytes=ram_total,
        ram_available_bytes=ram_available,
        disk_path=str(disk),
        disk_free_bytes=free,
        os=platform.platform(),
        **backends,
        **gpu_fields,
        notes=tuple(notes),
    )


def gib(n: int | None) -> str:
    """Bytes as GiB for people; None (not measured) stays visible as such."""
    return "not measured" if n is None else f"{n / 2**30:.1f} GiB"


def describe_accelerator(hw: Hardware) -> str:
    if hw.gpus:
        return ", ".join(f"cuda:{g.index} {g.name} ({gib(g.total_memory_bytes)})" for g in hw.gpus)
    if hw.cuda_available:
        return "CUDA"
    if hw.mps_available:
        return "Apple MPS"
    return "none (CPU only)"


def summary_lines(hw: Hardware) -> list[str]:
    """Human-readable lines for the CLI."""
    cores = f"{hw.physical_cores or '?'} physical / {hw.logical_cores or '?'} logical"
    return [
        f"CPU: {hw.cpu_model} ({cores})",
        f"ISA: {', '.join(hw.isa) or 'none of ' + ', '.join(ISA_FLAGS)}",
        f"RAM: {gib(hw.ram_total_bytes)} total, {gib(hw.ram_available_bytes)} available",
        f"Disk free at {hw.disk_path}: {gib(hw.disk_free_bytes)}",
        f"OS: {hw.os}",
        f"torch: {hw.torch_version or 'not installed'}; accelerator: {describe_accelerator(hw)}",
        describe_nvml(hw),
    ]


def gpu_story(hw: Hardware) -> str:
    """Why there is no GPU to use, as a sentence for a person (the NVML details are `describe_nvml`'s)."""
    if hw.gpus:
        return f"{len(hw.gpus)} GPU(s): {describe_accelerator(hw)}."
    if hw.cuda_available or hw.mps_available:
        return f"torch can use {describe_accelerator(hw)}, but NVML reports no NVIDIA GPU, so its memory is not read."
    reason = hw.nvml_reason or ""
    if hw.nvml_status == "ok":
        why = f"the NVIDIA driver {hw.driver_version} is installed but reports no GPU"
    elif "LibraryNotFound" in reason:
        why = "no NVIDIA driver is installed, so no NVIDIA GPU can be used"
    elif "not installed" in reason:
        why = "nvidia-ml-py, the library that reads NVIDIA GPUs, is not installed"
    else:
        why = "the NVIDIA driver did not answer"
    return (
        f"This machine has no GPU that Preflight can use: {why}, and torch sees no CUDA or Apple MPS device. "
        "That is expected on a CPU server; the bundled engine runs on the CPU."
    )


def describe_nvml(hw: Hardware) -> str:
    """One line on the NVIDIA driver as NVML sees it, or why there is none."""
    if hw.nvml_status == "ok":
        return f"NVML: driver {hw.driver_version}, CUDA {hw.cuda_driver_version}, {hw.gpu_count} GPU(s)"
    return f"NVML: {hw.nvml_status}: {hw.nvml_reason}"
