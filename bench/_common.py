"""Helpers shared by the bench/ scripts: machine conditions, worker processes, fixed-width tables.

Not a benchmark itself: `make bench` runs every bench/*.py, and this one does nothing. Each script states its conditions
above its table (STYLE.md section 9); `conditions()` gathers the machine part.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULT_MARKER = "@@RESULT "
"""A worker prints exactly one line starting with this, followed by its JSON result."""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else whatever `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def cpu_flags_of_interest() -> str:
    """The SIMD features the CPU kernels care about (AVX-512, VNNI, BF16, AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"


def source_revision(paths: Sequence[str] = ("engine",)) -> str:
    """The commit measured, and whether `paths` had uncommitted changes (a benchmark of a dirty tree says so)."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *paths], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{rev} + uncommitted changes in {', '.join(paths)}" if dirty else rev


def conditions() -> dict[str, object]:
    """Machine conditions every table states: CPU, cores, memory, load, date."""
    vm = psutil.virtual_memory()
    load1, load5, _ = os.getloadavg()
    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags_of_interest(),
        "physical_cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(vm.total / 2**30, 1),
        "load_avg_1m_5m": f"{load1:.2f} / {load5:.2f}",
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "revision": source_revision(),
    }


def rss_bytes() -> int:
    """Resident set size of this process."""
    return psutil.Process().memory_info().rss


def rss_file_bytes() -> int | None:
    """The file-backed part of RSS (mmapped files such as a GGUF or a safetensors cache), Linux only."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main_thread_cpu_s(pid: int) -> float | None:
    """CPU seconds so far of a process's main thread (a server's event loop; its thread id is the process id),
    from Linux's schedstat in nanoseconds: psutil's thread times are /proc's 10 ms ticks, coarser than one
    request's work. None where it cannot be read (the process is gone, or not Linux)."""
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def positive_int(text: str) -> int:
    """argparse type for counts (rounds, requests, threads): a bad one is a usage error before anything starts."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def median(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def run_worker(args: list[str], timeout_s: float = 900.0, env: dict[str, str] | None = None) -> dict:
    """Run `python <args>` from the repo root in a fresh process; return the JSON it marked as its result.

    A fresh process per measurement keeps load times and resident memory honest:
    nothing is already imported, allocated or cached in the interpreter. The result gains
    `background_cpu_pct`: the share of all CPUs that other processes used while it ran
    (system busy time minus the worker's own CPU time), the evidence for a noisy figure.
    """
    busy0, own0, t0 = _busy_seconds(), _children_cpu_seconds(), time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    wall = time.perf_counter() - t0
    other = (_busy_seconds() - busy0) - (_children_cpu_seconds() - own0)
    background = min(100.0, max(0.0, 100 * other / (wall * (os.cpu_count() or 1))))
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return {**json.loads(line[len(RESULT_MARKER) :]), "background_cpu_pct": background, "wall_s": wall}
    tail = (proc.stderr or proc.stdout)[-2000:]
    raise RuntimeError(f"worker {' '.join(args)} exited {proc.returncode} without a result:\n{tail}")


def emit_result(result: dict) -> None:
    """What a worker calls last: one marked line on stdout."""
    print(RESULT_MARKER + json.dumps(result), flush=True)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A fixed-width text table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return " | ".join(parts).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def fmt_num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def fmt_ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "-"
    return f"{ours / theirs:.2f}x"


def verdict(ok: bool | None, shortfall: str) -> str:
    """The met? cell: '-' without a target, 'yes', or 'NO: <by how much>'."""
    return "-" if ok is None else ("yes" if ok else f"NO: {shortfall}")


def ratio_row(
    label: str, ours: float | None, theirs: float | None, digits: int = 1, target: str = "-", met: str = "-"
) -> list[str]:
    """One row of a metric | ours | peer | ours/theirs | target | met? table."""
    return [label, fmt_num(ours, digits), fmt_num(theirs, digits), fmt_ratio(ours, theirs), target, met]


def summarise_profile(prof: object, wall_s: float, steps: int, top: int = 12) -> dict:
    """Per-step summary of a finished `torch.profiler.profile`: time inside aten ops vs outside, top ops.

    Self CPU times partition the time spent inside ops, so wall time minus their sum is
    Python, module calls and the profiler's own cost.
    """
    ops = [(e.key, e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()]  # type: ignore[attr-defined]
    ops.sort(key=lambda o: -o[1])
    wall_ms = wall_s * 1e3
    return {
        "steps": steps,
        "wall_ms_per_step": wall_ms / steps,
        "in_ops_ms_per_step": sum(ms for _, ms, _ in ops) / steps,
        "op_events_per_step": sum(c for *_, c in ops) / steps,
        "top": [
            {"op": k, "ms_per_step": ms / steps, "pct_of_wall": 100 * ms / wall_ms, "calls_per_step": c / steps}
            for k, ms, c in ops[:top]
        ],
    }


def format_profile(name: str, p: dict) -> str:
    """A heading line and a table for one `summarise_profile` result."""
    wall, in_ops = p["wall_ms_per_step"], p["in_ops_ms_per_step"]
    head = (
        f"{name} ({p['steps']} step(s)): {wall:.2f} ms/step under the profiler; {in_ops:.2f} ms inside aten ops, "
        f"{wall - in_ops:.2f} ms ({100 * (1 - in_ops / wall):.0f}%) outside any op (Python, modules, profiler); "
        f"{p['op_events_per_step']:.0f} aten events/step (nested included)"
    )
    rows = [
        [t["op"], f"{t['ms_per_step']:.3f}", f"{t['pct_of_wall']:.1f}%", f"{t['calls_per_step']:.0f}"] for t in p["top"]
    ]
    return head + "\n" + format_table(["op (self CPU)", "ms/step", "% of wall", "calls/step"], rows)
