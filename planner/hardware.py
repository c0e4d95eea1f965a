"""What this machine offers for inference: CPU, ISA features, memory, disk, torch backends.

`detect()` never raises: a probe that fails leaves its field as None (not measured),
never as 0, and says why in `notes`.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

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
    """One accelerator as torch sees it."""

    index: int
    name: str
    total_memory_bytes: int | None


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
    notes: tuple[str, ...] = field(default=())

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
            gpus.append(GpuInfo(index=i, name=props.name, total_memory_bytes=int(props.total_memory)))
        found["gpus"] = tuple(gpus)
    except Exception as exc:  # a broken driver must not break detection
        notes.append(f"CUDA probe failed: {type(exc).__name__}: {exc}")
    mps = getattr(torch.backends, "mps", None)
    found["mps_available"] = bool(mps is not None and mps.is_available())
    return found


def detect() -> Hardware:
    """Probe the machine. Never raises; failed probes are None and explained in `notes`."""
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
        **_torch_backends(notes),
        notes=tuple(notes),
    )


def gib(n: int | None) -> str:
    """Bytes as GiB for people; None (not measured) stays visible as such."""
    return "not measured" if n is None else f"{n / 2**30:.1f} GiB"


def describe_accelerator(hw: Hardware) -> str:
    if hw.cuda_available:
        return ", ".join(f"cuda:{g.index} {g.name} ({gib(g.total_memory_bytes)})" for g in hw.gpus) or "CUDA"
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
    ]
