"""Resource checks on real resource samples, real plans and this machine's NVML, disk and RAM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from readiness_helpers import benchmark_doc, context, record, run_check, run_doc

from checks.load.endpoint import Endpoint
from checks.load.resources import GpuSample, ResourceSample, open_nvml
from checks.readiness.check import Declared
from checks.readiness.kv_capacity import capacity_from_metrics, capacity_status
from checks.readiness.metrics_scrape import TIMELINE_KEY
from checks.readiness.resources import (
    GIB,
    MIB,
    RESOURCE_CHECKS,
    disk_status,
    growth_status,
    rss_growth,
    server_on_this_machine,
    used_status,
)
from planner.entrypoints import make_plan
from planner.workload import RecommendOptions
from reports.check_result import CheckStatus
from reports.metrics_timeline import MetricsSample, MetricsTimeline

PASS, WARN, FAIL, ERROR, SKIP = (
    CheckStatus.PASS,
    CheckStatus.WARN,
    CheckStatus.FAIL,
    CheckStatus.ERROR,
    CheckStatus.SKIP,
)
CHECKS = {c.id: c for c in RESOURCE_CHECKS}


def sample(t_s: float, rss: int | None = None, ram_used: int = 8 * GIB, gpu_used: int | None = None) -> ResourceSample:
    gpus = () if gpu_used is None else (GpuSample(0, "NVIDIA H100 80GB HBM3", gpu_used, 80 * GIB, 50.0),)
    return ResourceSample(
        t_s=t_s,
        host_cpu_percent=30.0,
        host_ram_used_bytes=ram_used,
        host_ram_total_bytes=32 * GIB,
        proc_rss_bytes=rss,
        proc_cpu_percent=100.0 if rss else None,
        gpus=gpus,
    )


def with_samples(samples: list[ResourceSample], **kw: object):
    """A benchmark whose measured requests start at t=1 s, with this resource timeline (as the result stores it)."""
    records = [record(i, 100, send_s=1.0 + i * 0.01) for i in range(20)]
    records.insert(0, record(99, 100, send_s=0.0, warmup=True))
    return context(benchmark_doc([run_doc(records)], samples=list(samples)), **kw)


# --- where the server is ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "declared", "where"),
    [
        ("http://127.0.0.1:9", Declared(), "a loopback URL (127.0.0.1)"),
        ("http://localhost:8000", Declared(), "a loopback URL (localhost)"),
        ("https://llm.example.com", Declared(), None),
        ("https://llm.example.com", Declared(server_pid=4242), "--server-pid 4242"),
    ],
)
def test_server_on_this_machine(url, declared, where) -> None:
    ctx = context(None, declared)
    ctx.endpoint = Endpoint(url, "m")
    assert server_on_this_machine(ctx) == where


@pytest.mark.parametrize("check_id", ["resources.gpu_memory", "resources.host_ram"])
def test_machine_lines_skip_for_a_remote_server(check_id) -> None:
    ctx = context(None)
    ctx.endpoint = Endpoint("https://llm.example.com", "m")
    result = run_check(CHECKS[check_id], ctx)
    assert result.status == SKIP
    assert "not on this machine" in result.message


# --- GPU memory ---------------------------------------------------------------------------------------


def test_gpu_memory_skips_without_an_nvidia_gpu() -> None:
    reader, note = open_nvml()
    if reader is not None:
        reader.close()
        pytest.skip("this machine has an NVIDIA GPU; the SKIP path needs one without")
    result = run_check(CHECKS["resources.gpu_memory"], context(None))
    assert result.status == SKIP
    assert result.message == f"no NVIDIA GPU readable on this machine: {note}"


def test_gpu_memory_reads_a_real_gpu_through_nvml() -> None:
    """The counterpart of the SKIP test: where NVML opens, the line is judged from the live reading."""
    reader, _ = open_nvml()
    if reader is None:
        pytest.skip("no NVIDIA GPU readable through NVML on this machine")
    try:
        gpus = [g for g in reader.read() if g.memory_used_bytes is not None and g.memory_total_bytes]
    finally:
        reader.close()
    if not gpus:
        pytest.skip("NVML opened but reports no memory figures")
    result = run_check(CHECKS["resources.gpu_memory"], context(None))
    assert result.status in (PASS, WARN, FAIL), result.message
    assert "NVML now" in result.message
    assert len([line for line in result.evidence if line.startswith("GPU ")]) == len(gpus)
    assert all(g.name in " ".join(result.evidence) for g in gpus)
    assert 0 <= result.value <= 100


@pytest.mark.parametrize(("used_gib", "status"), [(40, PASS), (67, PASS), (69, WARN), (76, FAIL)])
def test_gpu_memory_from_the_timeline_peak(used_gib, status) -> None:
    """80 GiB GPU: 85% is 68 GiB, 95% is 76 GiB. The peak of the run is judged, not the last reading."""
    samples = [sample(0.5, gpu_used=20 * GIB), sample(1.0, gpu_used=used_gib * GIB), sample(1.5, gpu_used=30 * GIB)]
    result = run_check(CHECKS["resources.gpu_memory"], with_samples(samples))
    assert result.status == status
    assert result.value == pytest.approx(used_gib / 80 * 100)
    assert "peak during the benchmark" in result.message
    assert f"{80 - used_gib:.1f} GiB free for KV growth" in result.evidence[0]


@pytest.mark.parametrize(
    ("fraction", "status"), [(0.0, PASS), (0.8499, PASS), (0.85, WARN), (0.9499, WARN), (0.95, FAIL), (1.0, FAIL)]
)
def test_used_status_table(fraction, status) -> None:
    assert used_status(fraction) == status


# --- host RAM and disk ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("ram_gib", "status"), [(8, PASS), (28, WARN), (31, FAIL)])
def test_host_ram_from_the_timeline_peak(ram_gib, status) -> None:
    samples = [sample(0.5), sample(1.0, ram_used=ram_gib * GIB), sample(1.5)]
    result = run_check(CHECKS["resources.host_ram"], with_samples(samples))
    assert result.status == status
    assert "peak of 3 samples" in result.message


def test_host_ram_now_without_a_benchmark() -> None:
    result = run_check(CHECKS["resources.host_ram"], context(None))
    assert result.status in (PASS, WARN, FAIL)
    assert 0 < result.value < 100
    assert "now (no benchmark timeline)" in result.message


@pytest.mark.parametrize(
    ("free_gib", "total_gib", "status"),
    [(100, 500, PASS), (40, 500, WARN), (4, 20, WARN), (0.5, 20, FAIL), (6, 20, PASS)],
)
def test_disk_status_table(free_gib, total_gib, status) -> None:
    assert disk_status(int(free_gib * GIB), int(total_gib * GIB)) == status


def test_disk_reads_the_cache_and_home_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFLIGHT_CACHE_DIR", str(tmp_path / "cache" / "not-yet"))
    monkeypatch.setenv("PREFLIGHT_HOME", str(tmp_path / "home"))
    result = run_check(CHECKS["resources.disk"], context(None))
    assert result.status in (PASS, WARN, FAIL)
    assert f"weights cache {tmp_path / 'cache' / 'not-yet'} (measured at {tmp_path})" in result.evidence[0]
    assert f"Preflight home {tmp_path / 'home'} (measured at {tmp_path})" in result.evidence[1]


# --- RSS growth ---------------------------------------------------------------------------------------


BASE = 1000 * MIB


def series(rss_at: object, n: int = 40, start: float = 1.0) -> list[ResourceSample]:
    return [sample(start + k * 0.5, rss=int(rss_at(k))) for k in range(n)]  # type: ignore[operator]


@pytest.mark.parametrize(
    ("samples", "status"),
    [
        (series(lambda k: BASE), PASS),  # flat
        (series(lambda k: BASE + (k % 3) * 40 * MIB), PASS),  # noise, no trend
        (series(lambda k: BASE + (400 * MIB if k == 20 else 0)), PASS),  # one spike mid-run
        (series(lambda k: BASE + k * 5 * MIB), WARN),  # ~15% and ~150 MiB
        (series(lambda k: BASE + k * 25 * MIB), FAIL),  # a steady leak: ~75%, ~750 MiB
        (series(lambda k: 200 * MIB + k * 3 * MIB), PASS),  # 40% growth, but only ~90 MiB: noise for a small process
        ([sample(0.1 * k, rss=100 * MIB + k * 50 * MIB) for k in range(10)] + series(lambda k: BASE), PASS),  # warm-up
    ],
)
def test_rss_growth_table(samples, status) -> None:
    result = run_check(CHECKS["resources.rss_growth"], with_samples(samples, declared=Declared(server_pid=os.getpid())))
    assert result.status == status, result.message
    assert "median RSS first quarter" in result.evidence[0]


def test_rss_growth_drops_warm_up_and_compares_quarter_medians() -> None:
    points = [(0.5, 10 * MIB), (0.9, 20 * MIB)] + [(1.0 + k, (100 + k) * MIB) for k in range(12)]
    g = rss_growth(points, warmup_end_s=1.0)
    assert g is not None
    assert g.points == 12
    assert g.start_bytes == 101 * MIB  # median of 100, 101, 102
    assert g.end_bytes == 110 * MIB  # median of 109, 110, 111
    assert g.span_s == 11
    assert growth_status(g) == PASS
    assert rss_growth(points[:9], warmup_end_s=1.0) is None  # 7 readings after warm-up


@pytest.mark.parametrize(
    ("samples", "declared", "words"),
    [
        (series(lambda k: BASE), Declared(), "needs the server's process"),
        ([], Declared(server_pid=4242), "needs the benchmark's resource timeline"),
        ([sample(1.0 + k) for k in range(20)], Declared(server_pid=4242), "did not watch process 4242"),
        (series(lambda k: BASE, n=5), Declared(server_pid=4242), "too few"),
    ],
)
def test_rss_growth_skips_with_the_reason(samples, declared, words) -> None:
    result = run_check(CHECKS["resources.rss_growth"], with_samples(samples, declared=declared))
    assert result.status == SKIP
    assert words in result.message


# --- KV capacity --------------------------------------------------------------------------------------


def kv_context(declared: Declared, timeline: dict | None = None, plan: dict | None = None):
    """Measured requests of 100 prompt + 11 output tokens, and the given /metrics timeline and plan."""
    ctx = context(benchmark_doc([run_doc([record(i, 100) for i in range(20)])]), declared, plan=plan)
    if timeline is not None:
        ctx.scratch[TIMELINE_KEY] = timeline
    return ctx


def usage_timeline(usage: float, running: int) -> MetricsTimeline:
    return MetricsTimeline(
        source="preflight",
        interval_s=0.5,
        samples=[
            MetricsSample(t_s=0.5, kv_cache_usage=0.01, running=1),
            MetricsSample(t_s=1.0, kv_cache_usage=usage, running=running),
            MetricsSample(t_s=1.5, error="HTTP 503"),
        ],
    )


@pytest.mark.parametrize(
    ("timeline", "declared", "status"),
    [
        # 10 streams at 50% usage: capacity 2,000 (prompts only) to 2,220 tokens (prompts + outputs)
        (usage_timeline(0.5, 10), Declared(concurrency=4, context_tokens=400), PASS),  # 1,600 needed
        (usage_timeline(0.5, 10), Declared(concurrency=7, context_tokens=300), WARN),  # 2,100: inside the range
        (usage_timeline(0.5, 10), Declared(concurrency=8, context_tokens=300), FAIL),  # 2,400
    ],
)
def test_kv_capacity_from_metrics(timeline, declared, status) -> None:
    result = run_check(CHECKS["resources.kv_capacity"], kv_context(declared, timeline))
    assert result.status == status
    assert result.evidence[0].startswith("source: the target's /metrics")
    assert result.threshold == declared.concurrency * declared.context_tokens


def test_capacity_range_from_usage() -> None:
    cap = capacity_from_metrics(usage_timeline(0.25, 4), 100.0, 50.0)
    assert cap is not None
    assert (cap.low_tokens, cap.high_tokens) == (1600, 2400)
    assert [capacity_status(cap, need) for need in (1600, 2000, 2401)] == [PASS, WARN, FAIL]
    idle = MetricsTimeline(
        source="preflight", interval_s=1.0, samples=[MetricsSample(t_s=1.0, kv_cache_usage=0.0, running=0)]
    )
    assert capacity_from_metrics(idle, 100.0, 50.0) is None  # nothing held: no estimate
    assert capacity_from_metrics(usage_timeline(0.25, 4), None, None) is None  # token counts unknown


@pytest.fixture(scope="module")
def plan() -> dict:
    return make_plan(RecommendOptions(model="llama-3.1-8b", gpu="h100-sxm", context=8192, concurrency=16)).to_dict()


def test_kv_capacity_falls_back_to_the_plan(plan) -> None:
    best = plan["options"][0]
    tokens = best["memory"]["num_blocks"] * best["memory"]["block_size"] * best["replicas"]
    for concurrency, status in ((tokens // 8192, PASS), (tokens // 8192 + 1, FAIL)):
        declared = Declared(concurrency=concurrency, context_tokens=8192)
        result = run_check(CHECKS["resources.kv_capacity"], kv_context(declared, plan=plan))
        assert result.status == status
        assert result.value == tokens
        assert "the plan (predicted, not measured)" in result.message
        assert "Llama-3.1-8B" in result.evidence[1]


@pytest.mark.parametrize(
    ("declared", "status", "words"),
    [
        (Declared(), SKIP, "--concurrency and --context-tokens"),
        (Declared(concurrency=4), SKIP, "--concurrency and --context-tokens"),
        (Declared(concurrency=4, context_tokens=2048), ERROR, "no KV figures"),
    ],
)
def test_kv_capacity_without_figures(declared, status, words) -> None:
    result = run_check(CHECKS["resources.kv_capacity"], kv_context(declared))
    assert result.status == status
    assert words in result.message
