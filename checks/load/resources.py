"""The resource timeline of a benchmark run: host CPU and RAM, the watched process tree, and GPUs.

`ResourceMonitor` samples in a daemon thread every `interval_s` until it is
stopped, then takes one last sample, so even a short run has one. Each
`ResourceSample` is stamped in run-clock seconds (`clock() - origin`, the same
clock the request records use when `origin` is the run's start).

- Host CPU % is psutil's interval-less `cpu_percent()`, primed when the
  sampler thread starts: each value covers the time since the previous sample.
  psutil keeps that state per thread, which is why the priming call is made in
  the sampler thread and not in `start()`.
- Host RAM used is `total - available`: memory that new work cannot have.
- The watched process (`pid`) is summed with all its descendants. Process CPU %
  is percent of one core (200 means two busy cores). A child seen for the first
  time counts 0 % in that sample (its counter is being primed), and a child
  that exits between samples loses its last interval: the figure is a floor.
- Once the watched process has exited (a zombie counts as exited), its fields
  are None in every later sample, and `process_note` says when (or that
  reading it was not permitted).
- GPUs come from NVML (`nvidia-ml-py`), initialised once at start. Without the
  library, a driver, or a GPU, samples have no GPUs and `gpu_note` says why;
  nothing raises. A field a device does not support is None, never 0.
- An unexpected failure inside the sampler ends sampling and is kept in
  `error`; `stop()` still returns the samples taken before it.

Not measured is None, never 0 (STYLE.md §4): `summarize_resources` gives None
for a figure that no sample measured. The sample and summary types are parts of the
saved benchmark result and live in `reports.resources`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import psutil

from reports.resources import GpuSample, GpuSummary, ResourceSample, ResourceSummary

T = TypeVar("T")

STOP_DEADLINE_S = 5.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _NvmlReader:
    """NVML opened once; `read()` gives one GpuSample per device. Built only by `open_nvml`."""

    def __init__(self, pynvml: Any, handles: list[Any], names: list[str]) -> None:
        self._nvml = pynvml
        self.error_type: type[Exception] = pynvml.NVMLError
        self._handles = handles
        self._names = names

    def _field(self, call: Callable[[], T]) -> T | None:
        try:
            return call()
        except self._nvml.NVMLError_NotSupported:
            return None

    def read(self) -> tuple[GpuSample, ...]:
        """Raises pynvml.NVMLError when a device stops answering (the caller stops asking)."""
        nvml, out = self._nvml, []
        for i, (h, name) in enumerate(zip(self._handles, self._names, strict=True)):
            mem = self._field(lambda h=h: nvml.nvmlDeviceGetMemoryInfo(h))
            util = self._field(lambda h=h: nvml.nvmlDeviceGetUtilizationRates(h))
            out.append(
                GpuSample(
                    index=i,
                    name=name,
                    memory_used_bytes=int(mem.used) if mem is not None else None,
                    memory_total_bytes=int(mem.total) if mem is not None else None,
                    utilization_percent=float(util.gpu) if util is not None else None,
                )
            )
        return tuple(out)

    def close(self) -> str | None:
        """Shut NVML down; the reason when that fails."""
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            return f"nvmlShutdown failed: {type(exc).__name__}: {exc}"
        return None


# Mirrors planner/nvml.py (NotSupported -> None, why in a note) rather than importing it: its probe()
# opens and closes NVML per call, a timeline needs one open session, and DESIGN.md lets checks
# depend on engine and reports only.
def open_nvml(loader: Callable[[], Any] | None = None) -> tuple[_NvmlReader | None, str | None]:
    """NVML ready to sample, or None and why. `loader` returns the pynvml module (tests pass a fake)."""
    try:
        pynvml = loader() if loader is not None else __import__("pynvml")
    except ImportError as exc:
        return None, f"nvidia-ml-py is not installed ({exc}); no GPU readings"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"NVML could not start: {type(exc).__name__}: {exc}; no GPU readings"
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        names = [_text(pynvml.nvmlDeviceGetName(h)) for h in handles]
    except pynvml.NVMLError as exc:
        reader = _NvmlReader(pynvml, [], [])
        notes = [f"NVML query failed: {type(exc).__name__}: {exc}; no GPU readings", reader.close()]
        return None, "; ".join(n for n in notes if n)
    reader = _NvmlReader(pynvml, handles, names)
    if not handles:
        return None, "; ".join(n for n in ("NVML works but reports no GPU", reader.close()) if n)
    return reader, None


class _ProcessTree:
    """The watched process and its descendants; CPU counters kept per process between samples."""

    def __init__(self, root: psutil.Process) -> None:
        self.root = root
        self._known: dict[int, psutil.Process] = {root.pid: root}
        root.cpu_percent(None)  # prime: the first real value covers start -> first sample

    def read(self) -> tuple[int, float] | None:
        """(RSS bytes, CPU %) summed over the tree; None once the root has exited (a zombie counts)."""
        try:
            if not self.root.is_running() or self.root.status() == psutil.STATUS_ZOMBIE:
                return None
            children = self.root.children(recursive=True)
            rss, cpu = self.root.memory_info().rss, self.root.cpu_percent(None)
        except psutil.NoSuchProcess:
            return None
        current: dict[int, psutil.Process] = {self.root.pid: self.root}
        for child in children:
            known = self._known.get(child.pid)
            proc = known if known is not None and known.is_running() else child
            try:
                rss += proc.memory_info().rss
                cpu += proc.cpu_percent(None)  # 0.0 on first sight: this call primes it
            except psutil.NoSuchProcess:
                continue  # the child exited since children() listed it; it no longer uses anything
            current[proc.pid] = proc
        self._known = current
        return rss, cpu


class ResourceMonitor:
    """Samples host, process tree and GPUs every `interval_s` seconds in a daemon thread.

    Use as a context manager (`with ResourceMonitor(pid) as m: ...; m.samples`) or
    `start()` ... `stop()`. `origin` is the run clock's zero (default: `clock()` at start).
    """

    def __init__(
        self,
        pid: int | None = None,
        interval_s: float = 0.5,
        origin: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
        nvml_loader: Callable[[], Any] | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0 seconds, got {interval_s}")
        if pid is not None and pid <= 0:
            raise ValueError(f"pid must be a positive process id or None, got {pid}")
        self.pid = pid
        self.interval_s = interval_s
        self.origin = origin
        self._clock = clock
        self._nvml_loader = nvml_loader
        self.gpu_note: str | None = None
        self.process_note: str | None = None if pid is not None else "no process watched"
        self.error: str | None = None
        self._samples: list[ResourceSample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tree: _ProcessTree | None = None
        self._nvml: _NvmlReader | None = None
        self._t0 = 0.0

    @property
    def samples(self) -> list[ResourceSample]:
        """A copy of the samples so far (safe to read while running)."""
        with self._lock:
            return list(self._samples)

    def start(self) -> ResourceMonitor:
        if self._thread is not None:
            raise RuntimeError("this ResourceMonitor was already started; make a new one per run")
        if self.origin is None:
            self.origin = self._clock()
        self._t0 = self.origin
        if self.pid is not None:
            try:
                self._tree = _ProcessTree(psutil.Process(self.pid))
            except psutil.NoSuchProcess:
                self.process_note = f"process {self.pid} had already exited when monitoring started"
        self._nvml, self.gpu_note = open_nvml(self._nvml_loader)
        self._thread = threading.Thread(target=self._run, name="preflight-resources", daemon=True)
        self._thread.start()
        return self

    def stop(self, deadline_s: float = STOP_DEADLINE_S) -> list[ResourceSample]:
        """Stop sampling (one last sample is taken) and return all samples.

        Waits at most `deadline_s` for the sampler thread; past that, `error` says
        so and the samples taken so far are returned (the daemon thread is left).
        """
        if self._thread is None:
            raise RuntimeError("ResourceMonitor.stop() before start()")
        self._stop.set()
        self._thread.join(deadline_s)
        if self._thread.is_alive():
            self.error = f"the sampler thread did not stop within {deadline_s} s; samples after that are missing"
        elif self._nvml is not None:
            note = self._nvml.close()
            self._nvml = None
            if note:
                self.gpu_note = f"{self.gpu_note}; {note}" if self.gpu_note else note
        return self.samples

    def __enter__(self) -> ResourceMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            psutil.cpu_percent(None)  # prime the host counter; psutil keeps it per calling thread
            while True:
                stopping = self._stop.wait(self.interval_s)
                sample = self._sample()
                with self._lock:
                    self._samples.append(sample)
                if stopping:
                    return
        except Exception as exc:  # kept for the caller: a sampler bug must not take the benchmark down
            self.error = f"resource sampling stopped: {type(exc).__name__}: {exc}"

    def _sample(self) -> ResourceSample:
        t_s = self._clock() - self._t0
        mem = psutil.virtual_memory()
        rss, cpu = self._read_tree(t_s)
        return ResourceSample(
            t_s=t_s,
            host_cpu_percent=psutil.cpu_percent(None),
            host_ram_used_bytes=int(mem.total - mem.available),
            host_ram_total_bytes=int(mem.total),
            proc_rss_bytes=rss,
            proc_cpu_percent=cpu,
            gpus=self._read_gpus(),
        )

    def _read_tree(self, t_s: float) -> tuple[int | None, float | None]:
        if self._tree is None:
            return None, None
        try:
            reading = self._tree.read()
        except psutil.AccessDenied as exc:
            self._tree = None
            self.process_note = f"no permission to read process {self.pid} or a child ({exc}); its fields are None"
            return None, None
        if reading is None:
            self._tree = None
            self.process_note = f"process {self.pid} exited by t={t_s:.3f} s; its fields are None from then on"
            return None, None
        return reading

    def _read_gpus(self) -> tuple[GpuSample, ...]:
        if self._nvml is None:
            return ()
        try:
            return self._nvml.read()
        except self._nvml.error_type as exc:
            note = self._nvml.close()
            self._nvml = None
            self.gpu_note = f"NVML stopped answering: {type(exc).__name__}: {exc}; no GPU readings from then on"
            if note:
                self.gpu_note += f"; {note}"
            return ()


def _peak(values: Iterable[float | int | None]) -> Any:
    measured = [v for v in values if v is not None]
    return max(measured) if measured else None


def _mean(values: Iterable[float | None]) -> float | None:
    measured = [v for v in values if v is not None]
    return sum(measured) / len(measured) if measured else None


def summarize_resources(samples: Iterable[ResourceSample]) -> ResourceSummary:
    """Peaks and means over a timeline; None for a figure no sample measured. One GpuSummary per GPU index."""
    samples = list(samples)
    gpu_index: dict[int, list[GpuSample]] = {}
    for s in samples:
        for g in s.gpus:
            gpu_index.setdefault(g.index, []).append(g)
    gpus = [
        GpuSummary(
            index=index,
            name=readings[-1].name,
            peak_memory_used_bytes=_peak(g.memory_used_bytes for g in readings),
            memory_total_bytes=_peak(g.memory_total_bytes for g in readings),
            mean_utilization_percent=_mean(g.utilization_percent for g in readings),
            sample_count=len(readings),
        )
        for index, readings in sorted(gpu_index.items())
    ]
    return ResourceSummary(
        sample_count=len(samples),
        peak_host_cpu_percent=_peak(s.host_cpu_percent for s in samples),
        peak_host_ram_used_bytes=_peak(s.host_ram_used_bytes for s in samples),
        host_ram_total_bytes=_peak(s.host_ram_total_bytes for s in samples),
        peak_proc_rss_bytes=_peak(s.proc_rss_bytes for s in samples),
        mean_proc_cpu_percent=_mean(s.proc_cpu_percent for s in samples),
        gpus=gpus,
    )
