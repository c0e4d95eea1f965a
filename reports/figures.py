"""The figures of the HTML export: what a run's records, its resources and the server's /metrics look like.

Each `Figure` is an SVG chart, or a short note saying why there is nothing to draw (no
successful request, no timeline, every scrape failed), so an empty document still
renders. The percentile marks on the latency charts are the run's saved summary
figures, not recomputed here: the chart and the key-metrics table show the same p50,
p95 and p99. Records are binned before drawing, so a run of thousands of requests
gives charts of the same size as a run of ten.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from reports.benchmark_result import ResourcesDoc, RunDoc
from reports.metrics_timeline import MetricsSample, MetricsTimeline
from reports.records import RequestRecord, is_measured
from reports.resources import ResourceSample
from reports.svg_charts import Chart, Marker, Point, Series, bin_values, histogram, line_chart, nice_step, thin
from reports.throughput import chunks_of, rate_bins

THROUGHPUT_BINS = 60  # at most this many time bins in the throughput chart
LINE_POINTS = 600  # at most about this many points per line (timelines of long runs are thinned)
GIB = 2**30
BLUE, ORANGE, PURPLE = "#3b6fb6", "#d9822b", "#7b4fa0"
GPU_COLOURS = ("#2e8540", "#b3261e", "#0f7c8c", "#8a6d00")


@dataclass(frozen=True, slots=True)
class Figure:
    """A chart (`svg`) with an optional caption (`note`), or only a note when there is nothing to draw."""

    title: str
    svg: str | None = None
    note: str | None = None


def measured_successes(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    """The records a summary's latency figures rest on: successful and not warm-up.

    The same selection as `checks.load.metrics.summarize` (a successful record is never a
    cancelled one), so the distributions drawn are the ones the summary's percentiles describe.
    """
    return [r for r in records if r.ok and is_measured(r)]


def latency_figure(name: str, values_ms: Sequence[float], marks_ms: Sequence[float | None]) -> Figure:
    """A histogram of one latency over requests, with the summary's p50, p95 and p99 (in that order) marked."""
    title = f"{name} distribution"
    bins = bin_values(values_ms)
    if not bins.counts:
        return Figure(title, note=f"No {name} values: no successful request measured one.")
    markers = [Marker(v, f"p{q} {v:.4g} ms") for q, v in zip((50, 95, 99), marks_ms, strict=True) if v is not None]
    chart = Chart(f"{name} over {sum(bins.counts)} requests", f"{name} (ms)", "requests")
    return Figure(title, svg=histogram(chart, bins, markers))


def throughput_points(records: Sequence[RequestRecord]) -> tuple[list[Point], float] | None:
    """Output tokens per second in round-width time bins from the first measured send (`reports.throughput`),
    and the bin width in s. None when no successful request streamed a token after the first send."""
    sends = [r.send_s for r in records if not r.warmup and math.isfinite(r.send_s)]
    chunks = chunks_of(measured_successes(records))
    if not sends or not chunks:
        return None
    start = min(sends)
    span = max(t for t, _ in chunks) - start
    if not 0 < span < math.inf:
        return None
    width = nice_step(span, THROUGHPUT_BINS)
    n = max(1, math.ceil(span / width))
    rates = rate_bins(chunks, start, width, n)
    points: list[Point] = [(i * width, rate) for i, rate in enumerate(rates)]
    return [*points, (n * width, rates[-1])], width


def run_figures(run: RunDoc) -> list[Figure]:
    """TTFT and TPOT distributions and output throughput over time for one run."""
    good = measured_successes(run.records)
    s = run.summary
    ttft = [r.ttft_s * 1000 for r in good if r.ttft_s is not None]
    tpot = [r.tpot_s * 1000 for r in good if r.tpot_s is not None]
    figures = [
        latency_figure("TTFT", ttft, (s.p50_ttft_ms, s.p95_ttft_ms, s.p99_ttft_ms)),
        latency_figure("TPOT", tpot, (s.p50_tpot_ms, s.p95_tpot_ms, s.p99_tpot_ms)),
    ]
    binned = throughput_points(run.records)
    if binned is None:
        figures.append(Figure("Output throughput over time", note="No output tokens were streamed in this run."))
    else:
        points, width = binned
        chart = Chart(f"Output tokens per second ({width:g} s bins)", "seconds since the first measured send", "tok/s")
        figures.append(
            line_figure("Output throughput over time", chart, [Series("output tok/s", points, BLUE, step=True)])
        )
    return figures


def _points(samples: Sequence[MetricsSample], name: str, scale: float = 1.0) -> list[Point]:
    """One metrics field over time; a failed or missing reading is a gap, not a zero."""
    pts: list[Point] = []
    for s in samples:
        value = getattr(s, name)
        pts.append((s.t_s, None if value is None else value * scale))
    return thin(pts, LINE_POINTS)


def line_figure(
    title: str,
    chart: Chart,
    series: Sequence[Series],
    y_max: float | None = None,
    note: str | None = None,
    empty: str = "Nothing was measured.",
) -> Figure:
    """A line chart of the series with at least one measured point (a gauge the server never exported gets no
    legend entry), or the `empty` note when none has one."""
    drawn = [s for s in series if any(y is not None and math.isfinite(y) for _, y in s.points)]
    if not drawn:
        return Figure(title, note=f"{empty} {note}" if note else empty)
    return Figure(title, svg=line_chart(chart, drawn, y_max=y_max), note=note)


def _timeline_note(timeline: MetricsTimeline) -> str:
    errors = timeline.errors
    parts = [
        f"{len(timeline.samples)} scrapes of /metrics every {timeline.interval_s:g} s, "
        f"read as {timeline.source or 'an unrecognised server'}"
    ]
    if errors:
        parts.append(f"{len(errors)} failed (first: {errors[0].error}); failed scrapes are gaps")
    if timeline.note:
        parts.append(timeline.note)
    return "; ".join(parts) + "."


def timeline_figures(timeline: MetricsTimeline | None) -> list[Figure]:
    """Running and waiting requests, and KV-cache usage, as the server reported them during the load."""
    if timeline is None:
        return [Figure("Server /metrics timeline", note="This report has no /metrics timeline.")]
    note = _timeline_note(timeline)
    x_label = "seconds since the run began"
    requests = [
        Series("running", _points(timeline.samples, "running"), BLUE),
        Series("waiting", _points(timeline.samples, "waiting"), ORANGE),
    ]
    kv = [Series("KV usage", _points(timeline.samples, "kv_cache_usage", 100.0), PURPLE)]
    return [
        line_figure(
            "Requests on the server",
            Chart("Running and waiting requests", x_label, "requests"),
            requests,
            note=note,
            empty="No running or waiting gauge was read.",
        ),
        line_figure(
            "KV-cache usage",
            Chart("KV-cache usage", x_label, "% of blocks in use"),
            kv,
            y_max=100,
            empty="The server exported no KV-cache usage gauge.",
        ),
    ]


def _gpu_memory_gib(sample: ResourceSample, index: int) -> float | None:
    used = next((g.memory_used_bytes for g in sample.gpus if g.index == index), None)
    return None if used is None else used / GIB


def resource_figures(resources: ResourcesDoc) -> list[Figure]:
    """CPU and memory of the client host and the watched server process over the run, GPU memory when read."""
    samples = resources.samples
    if not samples:
        return [Figure("Resources over time", note=resources.gpu_note or "No resource samples were taken.")]
    cpu = [
        Series("host CPU %", thin([(s.t_s, s.host_cpu_percent) for s in samples], LINE_POINTS), BLUE),
        Series("process CPU % of one core", thin([(s.t_s, s.proc_cpu_percent) for s in samples], LINE_POINTS), ORANGE),
    ]
    memory = [
        Series("host RAM used", thin([(s.t_s, s.host_ram_used_bytes / GIB) for s in samples], LINE_POINTS), BLUE),
        Series(
            "process RSS",
            thin([(s.t_s, None if s.proc_rss_bytes is None else s.proc_rss_bytes / GIB) for s in samples], LINE_POINTS),
            ORANGE,
        ),
    ]
    for index in sorted({g.index for s in samples for g in s.gpus}):
        pts = [(s.t_s, _gpu_memory_gib(s, index)) for s in samples]
        memory.append(Series(f"GPU {index} memory", thin(pts, LINE_POINTS), GPU_COLOURS[index % len(GPU_COLOURS)]))
    x_label = "seconds since the run began"
    return [
        line_figure("CPU over time", Chart("CPU", x_label, "percent"), cpu),
        line_figure("Memory over time", Chart("Memory", x_label, "GiB"), memory, note=resources.gpu_note),
    ]
