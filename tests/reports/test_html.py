"""The HTML export: a self-contained page with the verdict, every check and SVG charts; hostile text stays text.

Documents are built the way a run builds them (records through `summarize` and `run_doc`),
with no server. The browser test opens the written file in Debian's Chromium and reads
Playwright's request log: the file itself is the only request.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from checks.readiness.slo import load_profile
from reports.benchmark_result import BenchmarkResult
from reports.check_result import Category, CheckResult, CheckStatus, Exposure
from reports.figures import latency_figure, measured_successes, throughput_points, timeline_figures
from reports.html import to_html
from reports.html_parts import figure_html
from reports.metrics_timeline import MetricsSample, MetricsTimeline
from reports.readiness_report import ReadinessReport, TargetInfo, ToolInfo
from reports.records import ErrorKind, RequestRecord
from reports.resources import ResourceSample
from reports.svg_charts import Chart, Series, bin_values, histogram, line_chart, thin, ticks
from reports.verdict import decide
from tests.readiness_helpers import benchmark_doc, failure, record, run_doc, spread

HOSTILE = "<script>alert(1)</script>"
VOID = {"meta", "link", "br", "hr", "img", "input", "col", "area", "base", "source", "track", "wbr", "embed"}
URL_ATTRS = {"src", "href", "xlink:href", "action", "formaction", "srcset", "poster", "data", "background"}
GIB = 2**30


class PageParser(HTMLParser):
    """Reads a page strictly: every non-void element closed in order, and every tag and URL attribute kept."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.handlers: list[str] = []
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._attrs(tag, attrs)
        self._in_style = tag == "style"
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._attrs(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += data

    def _attrs(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [v or "" for k, v in attrs if k in URL_ATTRS]
        self.handlers += [k for k, _ in attrs if k.startswith("on")]


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    assert not parser.problems and not parser.stack, (parser.problems, parser.stack)
    return parser


def _check(i: int, status: CheckStatus, category: Category, message: str | None = None) -> CheckResult:
    return CheckResult(
        id=f"{category.value}.c{i}",
        category=category,
        title=f"check {i}",
        status=status,
        value=100.0 + i,
        threshold=500.0,
        unit="ms",
        evidence=[f"GET /x -> {i}"],
        message=message or f"finding {i}",
        reference="OWASP LLM10:2025",
        remediation=f"fix {i}" if status != CheckStatus.PASS else None,
    )


def _records(n: int) -> list[RequestRecord]:
    ttfts = spread(n, 80.0, 400.0)
    good = [record(i, ttfts[i], tpot_ms=15.0 + i % 7, tokens=12, send_s=i * 0.02) for i in range(n)]
    warmup = [record(n + 10, 900.0, send_s=0.0, warmup=True)]
    return warmup + good + [failure(n + 1, 500), failure(n + 2, 503)]


def _timeline() -> MetricsTimeline:
    samples = [
        MetricsSample(t_s=float(t), running=min(t, 4), waiting=max(0, t - 4), kv_cache_usage=t / 20) for t in range(12)
    ]
    samples[5] = MetricsSample(t_s=5.0, error="HTTP 503")
    return MetricsTimeline(source="vllm", interval_s=1.0, samples=samples)


def _resources() -> list[ResourceSample]:
    return [
        ResourceSample(
            t_s=t * 0.5,
            host_cpu_percent=20.0 + t,
            host_ram_used_bytes=(40 + t) * GIB // 10,
            host_ram_total_bytes=16 * GIB,
            proc_rss_bytes=2 * GIB,
            proc_cpu_percent=150.0,
        )
        for t in range(10)
    ]


def _benchmark(n: int = 200) -> BenchmarkResult:
    return benchmark_doc([run_doc(_records(n))], samples=_resources())


def _report(
    checks: list[CheckResult] | None = None,
    benchmark: BenchmarkResult | None = None,
    timeline: MetricsTimeline | None = None,
    model: str = "m",
) -> ReadinessReport:
    if checks is None:
        statuses = [
            CheckStatus.PASS,
            CheckStatus.WARN,
            CheckStatus.FAIL,
            CheckStatus.SKIP,
            CheckStatus.ERROR,
            CheckStatus.PASS,
        ]
        categories = [
            Category.PERFORMANCE,
            Category.SECURITY,
            Category.SECURITY,
            Category.RESOURCES,
            Category.MONITORING,
            Category.RELIABILITY,
        ]
        checks = [_check(i, s, c) for i, (s, c) in enumerate(zip(statuses, categories, strict=True))]
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    target = TargetInfo(
        kind="remote", base_url="https://u:sk-x@gw.example/v1?key=sk-x", model=model, api="chat", api_key_set=True
    )
    return ReadinessReport(
        tool=ToolInfo(version="0.1.0"),
        started_at=now,
        finished_at=now,
        environment={
            "cpu_model": "AMD EPYC",
            "ram_total_bytes": 16 * GIB,
            "isa": ["avx2"],
            "gpus": [{"name": "H200", "memory_total_bytes": 141 * GIB}],
        },
        target=target,
        slo=load_profile("chat"),
        exposure=Exposure.PUBLIC,
        categories=list(Category),
        checks=checks,
        verdict=decide(checks),
        benchmark=benchmark,
        benchmark_source="measured by this run",
        metrics_timeline=timeline,
        notes=["a note for the reader"],
    )


def _svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.S)


def test_report_page_shows_verdict_every_check_and_the_charts() -> None:
    report = _report(benchmark=_benchmark(), timeline=_timeline())
    page = to_html(report)
    parsed = parse(page)
    assert '<span class="verdict v-NOT_READY">NOT_READY</span>' in page
    assert all(f"<code>{r.id}</code>" in page for r in report.checks)
    assert "fix 2" in page and "fix 0" not in page  # remediation on non-PASS lines only
    assert "GET /x -&gt; 2" in page and "OWASP LLM10:2025" in page  # evidence and reference of findings
    titles = [re.search(r"<title>(.*?)</title>", svg).group(1) for svg in _svgs(page)]
    assert titles == [
        "TTFT over 200 requests",
        "TPOT over 200 requests",
        "Output tokens per second (0.1 s bins)",
        "Running and waiting requests",
        "KV-cache usage",
        "CPU",
        "Memory",
    ]
    assert parsed.tags.count("svg") == 7
    assert "1 failed (first: HTTP 503)" in page  # the failed scrape is explained, drawn as a gap
    assert "https://gw.example/v1" in page and "sk-x" not in page
    assert "ram_total_bytes" in page and "17179869184 (16.0 GiB)" in page and "gpus[0].name" in page


def test_latency_charts_mark_the_summary_percentiles() -> None:
    result = _benchmark()
    s = result.runs[0].summary
    ttft_chart, tpot_chart = _svgs(to_html(result))[:2]
    for q, value in ((50, s.p50_ttft_ms), (95, s.p95_ttft_ms), (99, s.p99_ttft_ms)):
        assert f"p{q} {value:.4g} ms" in ttft_chart
    assert f"p99 {s.p99_tpot_ms:.4g} ms" in tpot_chart
    # the key-metrics table shows the same figure with its interval
    lo, hi = s.p99_ttft_ms_ci95
    assert f"{s.p99_ttft_ms:.4g} ms [{lo:.4g}, {hi:.4g}]" in to_html(result)


def test_page_fetches_nothing() -> None:
    parsed = parse(to_html(_report(benchmark=_benchmark(), timeline=_timeline())))
    assert parsed.urls == ["data:,"]  # the empty favicon, so a browser does not ask for /favicon.ico
    assert not {"script", "img", "iframe", "object", "embed", "audio", "video"} & set(parsed.tags)
    assert "@import" not in parsed.style and "url(" not in parsed.style


def test_hostile_strings_stay_text() -> None:
    excerpt = "</pre><img src=x onerror=alert(2)>"
    records = _records(20)
    records.append(
        RequestRecord(
            request_id=99,
            scheduled_s=None,
            ready_s=0.5,
            send_s=0.5,
            first_token_s=None,
            chunk_times_s=[],
            chunk_tokens=[],
            end_s=0.6,
            input_tokens=8,
            output_tokens=None,
            token_source=None,
            ok=False,
            http_status=None,
            error_kind=ErrorKind.STREAM_ERROR,
            error_excerpt=excerpt,
        )
    )
    bench = benchmark_doc([run_doc(records, profile="concurrency:2")])
    bench = bench.model_copy(
        update={
            "server_log_tail": HOSTILE,
            "workload": HOSTILE,
            "endpoint": bench.endpoint.model_copy(update={"model": HOSTILE}),
        }
    )
    checks = [_check(1, CheckStatus.FAIL, Category.SECURITY, message=HOSTILE)]
    checks[0] = checks[0].model_copy(update={"evidence": [HOSTILE], "title": HOSTILE})
    for doc in (_report(checks=checks, benchmark=bench, model=HOSTILE), bench):
        page = to_html(doc)
        parsed = parse(page)
        assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "onerror=alert(2)>" not in page and "&lt;/pre&gt;&lt;img src=x onerror=alert(2)&gt;" in page
        assert "script" not in parsed.tags and "img" not in parsed.tags and not parsed.handlers


def test_empty_and_invalid_documents_render_with_notes() -> None:
    only_failures = benchmark_doc([run_doc([failure(0), failure(1)])])
    invalid = benchmark_doc([run_doc(_records(30), valid=False)])
    all_failed_scrapes = MetricsTimeline(
        source=None, interval_s=1.0, note="no known metric names", samples=[MetricsSample(t_s=0.0, error="timeout")]
    )
    no_runs = invalid.model_copy(update={"runs": [], "valid": True})
    pages = {
        "bare": to_html(_report(checks=[])),
        "failures": to_html(_report(benchmark=only_failures, timeline=all_failed_scrapes)),
        "invalid": to_html(invalid),
        "no_runs": to_html(no_runs),
    }
    for page in pages.values():
        parse(page)
    assert "INCOMPLETE" in pages["bare"] and "No check ran." in pages["bare"]
    assert "holds no benchmark" in pages["bare"] and "no /metrics timeline" in pages["bare"]
    assert "<svg" not in pages["failures"]
    assert "No TTFT values" in pages["failures"] and "No output tokens were streamed" in pages["failures"]
    assert "No running or waiting gauge was read" in pages["failures"] and "no known metric names" in pages["failures"]
    assert 'v-INVALID">INVALID' in pages["invalid"] and "schedule lag p99 120 ms" in pages["invalid"]
    assert "has no runs" in pages["no_runs"]


def test_a_sweep_shows_every_run() -> None:
    runs = [run_doc(_records(40), profile=p) for p in ("sync", "poisson:2", "concurrency:8")]
    page = to_html(benchmark_doc(runs, sweep=True, sweep_max_rate=2.0))
    assert page.count("<h2>Run <code>") == 3 and "<th>poisson:2</th>" in page
    assert "Highest rate meeting the SLO" in page and "2 req/s" in page
    assert len(_svgs(page)) == 3 * 3 and "No resource samples were taken." in page


def test_five_thousand_records_stay_small() -> None:
    samples = [
        MetricsSample(t_s=t * 0.5, running=t % 9, waiting=t % 5, kv_cache_usage=(t % 100) / 100) for t in range(5000)
    ]
    long_timeline = MetricsTimeline(source="preflight", interval_s=0.5, samples=samples)
    page = to_html(_report(benchmark=_benchmark(5000), timeline=long_timeline))
    parse(page)
    assert len(page.encode()) < 150_000  # about 60 kB: lines thinned to ~600 points, latencies in 40 bins
    assert page.count("<rect") < 200 and page.count("<path") < 50  # binned: no element per record


def test_throughput_bins_hold_every_measured_token() -> None:
    records = _records(50)
    points, width = throughput_points(records)
    binned_tokens = sum(y * width for _, y in points[:-1])
    assert binned_tokens == pytest.approx(sum(r.output_tokens for r in measured_successes(records)))
    assert points[0][0] == 0.0 and points[-1][1] == points[-2][1]  # the step ends on the last bin's value


def test_chart_primitives() -> None:
    values, step = ticks(0.0, 0.7)
    assert step == 0.2 and values[-1] >= 0.7 and [f"{v:.1f}" for v in values] == ["0.0", "0.2", "0.4", "0.6", "0.8"]
    bins = bin_values([1.0, 2.0, 2.5, 9.9, 10.0])
    assert sum(bins.counts) == 5 and len(bins.edges) == len(bins.counts) + 1
    assert bin_values([7.0] * 3).counts == [3]  # one value repeated: one bin, no division by zero
    peaks = [(float(i), float(i % 50 == 7) * 100) for i in range(10_000)]
    thinned = thin(peaks, 400)
    assert len(thinned) <= 400 and max(y for _, y in thinned) == 100.0
    gap = line_chart(Chart("gap", "s", "n"), [Series("a", [(0, 1.0), (1, None), (2, 3.0)], "#000")])
    assert re.search(r'<path d="M[^"]* M', gap)  # the gap starts a new segment
    assert "&lt;b&gt;" in histogram(Chart("<b>", "x", "y"), bins)
    with pytest.raises(ValueError, match="show a note"):
        histogram(Chart("t", "x", "y"), bin_values([]))


@pytest.mark.parametrize("values", [[math.nan, 1.0, 2.0], [math.inf, -math.inf], [0.0, 1e-320], [-5.0, 1e300], [3.0]])
def test_odd_numbers_draw_or_explain_but_never_raise(values: list[float]) -> None:
    """A document that validates may still hold NaN, infinities or extreme spans (JSON from another tool)."""
    fig = latency_figure("TTFT", values, (math.nan, math.inf, None))
    assert (fig.svg is None) == (not any(math.isfinite(v) for v in values))
    samples = [MetricsSample(t_s=float(i), running=v, kv_cache_usage=v) for i, v in enumerate(values)]
    for f in timeline_figures(MetricsTimeline(interval_s=1.0, samples=samples)):
        parse(figure_html(f))


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (make test installs it)")
def test_browser_opens_the_file_offline_and_draws_the_charts(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from tests.ui.test_browser import CHROMIUM_ARGS

    path = tmp_path / "report.html"
    path.write_text(to_html(_report(benchmark=_benchmark(), timeline=_timeline())), encoding="utf-8")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            errors: list[str] = []  # a blocked fetch also shows here, as a CSP violation
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            assert page.title() == "Preflight readiness: NOT_READY"
            charts = page.locator("svg.chart")
            assert charts.count() == 7
            for i in range(charts.count()):
                box = charts.nth(i).bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 50
            bars = page.locator("svg.chart rect").first.bounding_box()
            assert bars is not None and bars["width"] > 0 and bars["height"] > 0
            page.screenshot(path=tmp_path / "report.png", full_page=True)
        finally:
            browser.close()
    assert requests == [path.as_uri()] and errors == []
