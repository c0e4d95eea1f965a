"""Resource checks: GPU memory, host RAM, disk, the server's memory growth, and KV capacity.

Thresholds, and why:
- GPU memory and host RAM: PASS below 85% used, WARN up to 95%, FAIL above. Activations,
  CUDA graphs, fragmentation and the allocator's cache spike above the steady figure; 15%
  is the headroom that survives a longer prompt than the benchmark sent, and past 95% the
  next spike is an OOM (or the kernel's OOM killer on the host). Engines that preallocate
  the KV pool (vLLM at gpu_memory_utilization 0.9) sit in the WARN band by design; the
  KV capacity line then says whether that pool is enough.
- Disk, on the weights cache and Preflight's home (reports, logs): PASS with at least
  5 GiB and 10% free, FAIL under 1 GiB. 5 GiB holds several converted weight formats of a
  small model plus weeks of reports with their records; under 10% free, ext4 keeps 5% for
  root and many file systems slow down; under 1 GiB one converted model or a long run's
  report may not fit.
- RSS growth (leak detection): see `rss_growth`. WARN at 10% and 128 MiB, FAIL at 25% and
  512 MiB, both figures required, so a small process's noise and a large one's allocator
  churn do not raise alarms, while a steady leak does.

GPU, RAM and RSS lines describe the machine the server runs on, so they apply only when
the server is on this machine (the bundled target, --server-pid, or a loopback URL);
NVML here says nothing about a remote endpoint's GPUs.
"""

from __future__ import annotations

import os
import shutil
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from checks.load.resources import open_nvml
from checks.readiness.check import Check, CheckContext
from checks.readiness.kv_capacity import KV_CAPACITY
from checks.readiness.measured import measurement
from reports.check_result import Category, CheckResult, CheckStatus
from reports.home import preflight_home

MIB, GIB = 2**20, 2**30
USED_WARN, USED_FAIL = 0.85, 0.95
DISK_MIN_FREE_BYTES, DISK_MIN_FREE_FRACTION, DISK_FAIL_BYTES = 5 * GIB, 0.10, 1 * GIB
RSS_WARN = (0.10, 128 * MIB)
RSS_FAIL = (0.25, 512 * MIB)
RSS_MIN_POINTS = 8  # two per quarter at least, so neither median is a single reading
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def server_on_this_machine(ctx: CheckContext) -> str | None:
    """Why the server is known to run here, or None when it is (or may be) elsewhere."""
    if ctx.bundled is not None:
        return "the bundled server"
    if ctx.declared.server_pid is not None:
        return f"--server-pid {ctx.declared.server_pid}"
    host = urlsplit(ctx.endpoint.base_url).hostname or ""
    return f"a loopback URL ({host})" if host in LOOPBACK_HOSTS else None


def used_status(fraction: float) -> CheckStatus:
    """PASS below 85% used, WARN up to 95%, FAIL above (see the module docstring)."""
    if fraction >= USED_FAIL:
        return CheckStatus.FAIL
    return CheckStatus.WARN if fraction >= USED_WARN else CheckStatus.PASS


def _remote_skip(check: Check) -> CheckResult:
    return check.skip(
        "the server is not on this machine (remote URL, no --server-pid): this machine's readings "
        "would say nothing about it"
    )


# --- GPU memory -----------------------------------------------------------------------------------------


def peak_gpu_memory(samples: Sequence[Any]) -> dict[int, tuple[str, int, int]]:
    """Per GPU index: (name, peak used bytes, total bytes) over a resource timeline; GPUs without both skipped."""
    peaks: dict[int, tuple[str, int, int]] = {}
    for sample in samples:
        for gpu in _get(sample, "gpus") or ():
            used, total = _get(gpu, "memory_used_bytes"), _get(gpu, "memory_total_bytes")
            if used is None or not total:
                continue
            index = _get(gpu, "index")
            if index not in peaks or used > peaks[index][1]:
                peaks[index] = (_get(gpu, "name"), used, total)
    return peaks


async def _gpu_memory(ctx: CheckContext, check: Check) -> CheckResult:
    where = server_on_this_machine(ctx)
    if where is None:
        return _remote_skip(check)
    m = measurement(ctx)
    peaks = peak_gpu_memory(m.resource_samples) if m is not None else {}
    source = "peak during the benchmark"
    if not peaks:
        reader, note = open_nvml()
        if reader is None:
            return check.skip(f"no NVIDIA GPU readable on this machine: {note}")
        try:
            peaks = {
                g.index: (g.name, g.memory_used_bytes, g.memory_total_bytes)
                for g in reader.read()
                if g.memory_used_bytes is not None and g.memory_total_bytes
            }
        finally:
            reader.close()
        source = "NVML now (no benchmark timeline with GPU readings)"
        if not peaks:
            return check.skip("NVML reports no GPU memory figures on this machine")
    index, (name, used, total) = max(peaks.items(), key=lambda kv: kv[1][1] / kv[1][2])
    fraction = used / total
    return check.result(
        used_status(fraction),
        f"GPU {index} ({name}) used {fraction:.0%} of its memory ({source})",
        value=fraction * 100,
        threshold=USED_WARN * 100,
        unit="%",
        evidence=[
            f"GPU {i} {n}: {u / GIB:.1f} of {t / GIB:.1f} GiB used, {(t - u) / GIB:.1f} GiB free for KV growth"
            for i, (n, u, t) in sorted(peaks.items())
        ]
        + [f"server: {where}"],
    )


# --- host RAM -------------------------------------------------------------------------------------------


async def _host_ram(ctx: CheckContext, check: Check) -> CheckResult:
    where = server_on_this_machine(ctx)
    if where is None:
        return _remote_skip(check)
    m = measurement(ctx)
    readings = [
        (_get(s, "host_ram_used_bytes"), _get(s, "host_ram_total_bytes"))
        for s in (m.resource_samples if m is not None else [])
    ]
    readings = [(u, t) for u, t in readings if u is not None and t]
    if readings:
        used, total = max(readings, key=lambda r: r[0] / r[1])
        source = f"peak of {len(readings)} samples during the benchmark"
    else:
        mem = psutil.virtual_memory()
        used, total, source = mem.total - mem.available, mem.total, "now (no benchmark timeline)"
    fraction = used / total
    return check.result(
        used_status(fraction),
        f"host RAM {fraction:.0%} used ({source})",
        value=fraction * 100,
        threshold=USED_WARN * 100,
        unit="%",
        evidence=[f"{used / GIB:.1f} of {total / GIB:.1f} GiB used (total - available)", f"server: {where}"],
    )


# --- disk -----------------------------------------------------------------------------------------------


def weights_cache_root() -> Path:
    """$PREFLIGHT_CACHE_DIR, else the user cache folder: where engine/model/weight_cache.py and the planner look.
    Mirrored here, not imported: checks import the engine only to start it (DESIGN.md)."""
    env = os.environ.get("PREFLIGHT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("preflight"))


def disk_status(free: int, total: int) -> CheckStatus:
    if free < DISK_FAIL_BYTES:
        return CheckStatus.FAIL
    if free < DISK_MIN_FREE_BYTES or free < DISK_MIN_FREE_FRACTION * total:
        return CheckStatus.WARN
    return CheckStatus.PASS


def _usage(path: Path) -> tuple[Path, int, int] | None:
    """(existing folder measured, free, total) for `path` or its nearest existing parent."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        du = shutil.disk_usage(probe)
    except OSError:
        return None
    return probe, du.free, du.total


async def _disk(ctx: CheckContext, check: Check) -> CheckResult:
    rows = []
    for label, path in (("weights cache", weights_cache_root()), ("Preflight home", preflight_home())):
        usage = _usage(path)
        if usage is None:
            return check.error(f"cannot read free space of the {label} {path}")
        probe, free, total = usage
        rows.append((disk_status(free, total), label, path, probe, free, total))
    order = (CheckStatus.PASS, CheckStatus.WARN, CheckStatus.FAIL)
    status, label, _, _, free, total = max(rows, key=lambda r: (order.index(r[0]), -r[4]))  # worst, then least free
    return check.result(
        status,
        f"{free / GIB:.1f} GiB free for the {label} ({free / total:.0%} of its file system)",
        value=free / GIB,
        threshold=DISK_MIN_FREE_BYTES / GIB,
        unit="GiB",
        evidence=[
            f"{lbl} {p} (measured at {probe}): {f / GIB:.1f} of {t / GIB:.1f} GiB free"
            for _, lbl, p, probe, f, t in rows
        ],
    )


# --- RSS growth -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Growth:
    start_bytes: float  # median RSS of the first quarter after warm-up
    end_bytes: float  # median RSS of the last quarter
    points: int
    span_s: float

    @property
    def bytes(self) -> float:
        return self.end_bytes - self.start_bytes

    @property
    def fraction(self) -> float:
        return self.bytes / self.start_bytes if self.start_bytes > 0 else float("inf")


def rss_growth(points: Sequence[tuple[float, int]], warmup_end_s: float | None = None) -> Growth | None:
    """How much the server's RSS grew over the measured run; None with fewer than RSS_MIN_POINTS readings.

    Readings before `warmup_end_s` are dropped: loading weights, first CUDA kernels and warm-up
    allocations are growth that stops. The rest are split in quarters by time order and the
    median of the last quarter is compared with the median of the first. Medians ignore a
    garbage-collection dip or a transient buffer, and comparing quarters rather than first and
    last readings needs the growth to persist across the run, which is what a leak does.
    """
    kept = sorted((t, rss) for t, rss in points if warmup_end_s is None or t >= warmup_end_s)
    if len(kept) < RSS_MIN_POINTS:
        return None
    quarter = len(kept) // 4
    first = statistics.median(rss for _, rss in kept[:quarter])
    last = statistics.median(rss for _, rss in kept[-quarter:])
    return Growth(first, last, len(kept), kept[-1][0] - kept[0][0])


def growth_status(g: Growth) -> CheckStatus:
    for status, (fraction, absolute) in ((CheckStatus.FAIL, RSS_FAIL), (CheckStatus.WARN, RSS_WARN)):
        if g.fraction >= fraction and g.bytes >= absolute:
            return status
    return CheckStatus.PASS


async def _rss_growth(ctx: CheckContext, check: Check) -> CheckResult:
    if ctx.server_pid is None:
        return check.skip("needs the server's process: the bundled target, or --server-pid for a local server")
    m = measurement(ctx)
    if m is None or not m.resource_samples:
        return check.skip("needs the benchmark's resource timeline: run the checklist with its benchmark")
    points = [(_get(s, "t_s"), _get(s, "proc_rss_bytes")) for s in m.resource_samples]
    points = [(t, rss) for t, rss in points if t is not None and rss is not None]
    if not points:
        return check.skip(f"the benchmark's timeline did not watch process {ctx.server_pid}; rerun with it watched")
    g = rss_growth(points, m.measured_start_s)
    if g is None:
        return check.skip(
            f"{len(points)} RSS readings after warm-up is too few to tell growth from noise "
            f"(need {RSS_MIN_POINTS}): run longer or sample more often"
        )
    per_min = g.bytes / MIB / (g.span_s / 60) if g.span_s > 0 else 0.0
    return check.result(
        growth_status(g),
        f"server RSS grew {g.bytes / MIB:+.0f} MiB ({g.fraction:+.1%}) over the measured run",
        value=g.bytes / MIB,
        threshold=RSS_WARN[1] / MIB,
        unit="MiB",
        evidence=[
            f"median RSS first quarter {g.start_bytes / MIB:.0f} MiB, last quarter {g.end_bytes / MIB:.0f} MiB",
            f"{g.points} readings over {g.span_s:.0f} s after warm-up ({per_min:+.1f} MiB/min)",
            f"WARN at {RSS_WARN[0]:.0%} and {RSS_WARN[1] // MIB} MiB, FAIL at {RSS_FAIL[0]:.0%} and "
            f"{RSS_FAIL[1] // MIB} MiB",
        ],
        remediation="Run longer at a steady rate and watch RSS: growth that never levels off is a leak (request "
        "state kept after the request ends, an unbounded cache, a growing log buffer).",
    )


RES = Category.RESOURCES
RESOURCE_CHECKS: list[Check] = [
    Check(
        "resources.gpu_memory",
        RES,
        "GPU memory below 85% used, with headroom for the KV cache",
        _gpu_memory,
        remediation="Lower the memory the engine reserves (gpu_memory_utilization), a lower-bit weight format, "
        "or a GPU with more memory.",
    ),
    Check(
        "resources.host_ram",
        RES,
        "Host RAM below 85% used",
        _host_ram,
        remediation="Free host memory or add RAM; check for swap activity and the OOM killer in the kernel log.",
    ),
    Check(
        "resources.disk",
        RES,
        "Disk headroom for the weights cache, reports and logs",
        _disk,
        remediation="Free space on the file system, or point PREFLIGHT_CACHE_DIR / PREFLIGHT_HOME elsewhere.",
    ),
    Check("resources.rss_growth", RES, "Server memory does not grow during the run", _rss_growth),
    KV_CAPACITY,
]
