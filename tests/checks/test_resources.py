"""The resource timeline: a real child process watched by pid, no pid, stopping, fake NVML, summary arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator

import pynvml
import pytest
from pydantic import TypeAdapter, ValidationError

from checks.load.resources import ResourceMonitor, summarize_resources
from reports.resources import GpuSample, ResourceSample

MB = 1_000_000
# Holds 60 MB of written (so resident) bytes, then sleeps; a parent that spawns it, for the tree test.
ALLOCATE = "import time; block = b'x' * 60_000_000; time.sleep({sleep_s})"
SPAWN = "import subprocess, sys; subprocess.run([sys.executable, '-c', {code!r}])"


def wait_for(condition: Callable[[], bool], deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {deadline_s} s")
        time.sleep(0.02)


@pytest.fixture
def spawn() -> Iterator[Callable[[str], subprocess.Popen]]:
    procs: list[subprocess.Popen] = []

    def start(code: str) -> subprocess.Popen:
        procs.append(subprocess.Popen([sys.executable, "-c", code]))
        return procs[-1]

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


def test_watched_child_rss_rises_then_is_none_after_it_exits(spawn) -> None:
    child = spawn(ALLOCATE.format(sleep_s=1.5))
    monitor = ResourceMonitor(child.pid, interval_s=0.05).start()
    # The child is not reaped here, so after exiting it is a zombie: that must count as exited.
    wait_for(lambda: any(s.proc_rss_bytes is None for s in monitor.samples))
    samples = monitor.stop()

    assert monitor.error is None
    first_gone = next(i for i, s in enumerate(samples) if s.proc_rss_bytes is None)
    before, after = samples[:first_gone], samples[first_gone:]
    assert max(s.proc_rss_bytes for s in before) > 50 * MB
    assert all(s.proc_cpu_percent is not None for s in before)
    assert all(s.proc_rss_bytes is None and s.proc_cpu_percent is None for s in after)
    assert f"process {child.pid} exited" in monitor.process_note
    assert all(s.host_ram_total_bytes >= s.host_ram_used_bytes > 0 for s in samples)
    assert [s.t_s for s in samples] == sorted(s.t_s for s in samples)


def test_descendants_are_summed_into_the_watched_process(spawn) -> None:
    parent = spawn(SPAWN.format(code=ALLOCATE.format(sleep_s=1.5)))
    with ResourceMonitor(parent.pid, interval_s=0.05) as monitor:
        # The parent interpreter alone holds ~10 MB; past 50 MB the child's block is in the sum.
        wait_for(lambda: any((s.proc_rss_bytes or 0) > 50 * MB for s in monitor.samples))
    assert monitor.error is None


def test_no_pid_gives_none_process_fields() -> None:
    with ResourceMonitor(interval_s=0.02) as monitor:
        wait_for(lambda: len(monitor.samples) >= 2)
    samples = monitor.samples
    assert all(s.proc_rss_bytes is None and s.proc_cpu_percent is None for s in samples)
    assert all(0.0 <= s.host_cpu_percent <= 100.0 for s in samples)
    assert monitor.process_note == "no process watched"


def test_a_process_gone_before_start_gives_none() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)  # reaped: the pid no longer exists
    monitor = ResourceMonitor(dead.pid, interval_s=60.0)
    samples = monitor.start().stop()
    assert len(samples) == 1 and samples[0].proc_rss_bytes is None and samples[0].proc_cpu_percent is None
    assert monitor.process_note == f"process {dead.pid} had already exited when monitoring started"


def test_stop_returns_within_its_deadline_and_takes_a_last_sample() -> None:
    """The sampler sleeps a 600 s interval; stop wakes it at once. Had it not, the thread would outlive the
    generous 30 s deadline and `error` would say so: the check is the thread's end, not a clock."""
    monitor = ResourceMonitor(interval_s=600.0, origin=time.perf_counter() - 100.0).start()
    samples = monitor.stop(deadline_s=30.0)
    assert monitor.error is None
    assert len(samples) == 1 and samples[0].t_s >= 100.0


def test_a_stuck_sampler_is_left_behind_at_the_deadline() -> None:
    release = threading.Event()

    def stuck_nvml() -> types.ModuleType:
        m = fake_pynvml()
        m.nvmlDeviceGetMemoryInfo = lambda h: release.wait(30)  # a GPU call that hangs until released
        return m

    monitor = ResourceMonitor(interval_s=0.01, nvml_loader=stuck_nvml).start()
    try:
        assert monitor.stop(deadline_s=0.2) == []
        assert monitor.error == "the sampler thread did not stop within 0.2 s; samples after that are missing"
    finally:
        release.set()


def test_a_sampler_failure_is_kept_not_raised() -> None:
    def broken_clock() -> float:
        raise OSError("clock gone")

    monitor = ResourceMonitor(interval_s=0.01, origin=0.0, clock=broken_clock).start()
    assert monitor.stop() == []
    assert monitor.error == "resource sampling stopped: OSError: clock gone"


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        ResourceMonitor(interval_s=0)
    with pytest.raises(ValueError, match="pid must be a positive"):
        ResourceMonitor(pid=0)


def fake_pynvml(util_supported: bool = True, init_error: Exception | None = None) -> types.ModuleType:
    """A stand-in pynvml with the real exception classes: two GPUs, the second one busier."""
    m = types.ModuleType("fake_pynvml")
    for name in ("NVMLError", "NVMLError_LibraryNotFound", "NVMLError_NotSupported", "NVMLError_Unknown"):
        setattr(m, name, getattr(pynvml, name))

    def init() -> None:
        if init_error is not None:
            raise init_error

    def util(h: int) -> types.SimpleNamespace:
        if not util_supported:
            raise pynvml.NVMLError_NotSupported()
        return types.SimpleNamespace(gpu=30 * (h + 1), memory=0)

    m.nvmlInit = init
    m.nvmlShutdown = lambda: None
    m.nvmlDeviceGetCount = lambda: 2
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=80 * 2**30, used=(h + 1) * 2**30, free=0)
    m.nvmlDeviceGetUtilizationRates = util
    return m


def test_gpus_through_nvml() -> None:
    with ResourceMonitor(interval_s=0.02, nvml_loader=fake_pynvml) as monitor:
        wait_for(lambda: len(monitor.samples) >= 2)
    gpus = monitor.samples[0].gpus
    assert monitor.gpu_note is None
    assert gpus == (
        GpuSample(0, "NVIDIA H100 80GB HBM3", 2**30, 80 * 2**30, 30.0),
        GpuSample(1, "NVIDIA H100 80GB HBM3", 2 * 2**30, 80 * 2**30, 60.0),
    )


def test_unsupported_gpu_utilisation_is_none() -> None:
    with ResourceMonitor(interval_s=0.02, nvml_loader=lambda: fake_pynvml(util_supported=False)) as monitor:
        wait_for(lambda: len(monitor.samples) >= 1)
    assert {g.utilization_percent for g in monitor.samples[0].gpus} == {None}
    assert summarize_resources(monitor.samples).gpus[0].mean_utilization_percent is None


def missing_nvml() -> types.ModuleType:
    raise ImportError("No module named 'pynvml'")


@pytest.mark.parametrize(
    ("loader", "note"),
    [
        (missing_nvml, "nvidia-ml-py is not installed"),
        (lambda: fake_pynvml(init_error=pynvml.NVMLError_LibraryNotFound()), "NVML could not start"),
    ],
)
def test_no_nvml_means_no_gpus_and_a_note(loader, note: str) -> None:
    with ResourceMonitor(interval_s=0.02, nvml_loader=loader) as monitor:
        wait_for(lambda: len(monitor.samples) >= 1)
    assert monitor.samples[0].gpus == ()
    assert monitor.gpu_note.startswith(note)
    assert monitor.error is None


def sample(t_s: float, cpu: float, ram: int, rss: int | None, pcpu: float | None, gpus=()) -> ResourceSample:
    return ResourceSample(t_s, cpu, ram, 1000, rss, pcpu, tuple(gpus))


def test_summary_arithmetic() -> None:
    g = GpuSample
    samples = [
        sample(0.5, 10.0, 400, 100, 50.0, [g(0, "a", 10, 80, 20.0), g(1, "b", 5, 80, None)]),
        sample(1.0, 90.0, 300, 300, 150.0, [g(0, "a", 30, 80, 40.0), g(1, "b", 7, 80, None)]),
        sample(1.5, 40.0, 350, None, None, [g(0, "a", 20, 80, 90.0), g(1, "b", 6, 80, None)]),
    ]
    summary = summarize_resources(samples)
    assert summary.model_dump() == {
        "sample_count": 3,
        "peak_host_cpu_percent": 90.0,
        "peak_host_ram_used_bytes": 400,
        "host_ram_total_bytes": 1000,
        "peak_proc_rss_bytes": 300,
        "mean_proc_cpu_percent": 100.0,  # the None after exit is not averaged in as 0
        "gpus": [
            {
                "index": 0,
                "name": "a",
                "peak_memory_used_bytes": 30,
                "memory_total_bytes": 80,
                "mean_utilization_percent": 50.0,
                "sample_count": 3,
            },
            {
                "index": 1,
                "name": "b",
                "peak_memory_used_bytes": 7,
                "memory_total_bytes": 80,
                "mean_utilization_percent": None,
                "sample_count": 3,
            },
        ],
    }


def test_summary_of_nothing_is_none_not_zero() -> None:
    assert summarize_resources([]).model_dump() == {
        "sample_count": 0,
        "peak_host_cpu_percent": None,
        "peak_host_ram_used_bytes": None,
        "host_ram_total_bytes": None,
        "peak_proc_rss_bytes": None,
        "mean_proc_cpu_percent": None,
        "gpus": [],
    }
    no_process = summarize_resources([sample(0.5, 1.0, 2, None, None)])
    assert no_process.peak_proc_rss_bytes is None and no_process.mean_proc_cpu_percent is None


def test_samples_round_trip_through_json() -> None:
    """A saved result holds samples as pydantic serialises them; loading gives equal samples back."""
    s = sample(0.5, 10.0, 400, 100, 50.0, [GpuSample(0, "a", 10, 80, None)])
    adapter = TypeAdapter(ResourceSample)
    data = json.loads(adapter.dump_json(s))
    assert data["gpus"] == [
        {"index": 0, "name": "a", "memory_used_bytes": 10, "memory_total_bytes": 80, "utilization_percent": None}
    ]
    assert adapter.validate_python(data) == s
    with pytest.raises(ValidationError, match="Unexpected keyword argument"):
        adapter.validate_python({**data, "gpu_temp_c": 70})
