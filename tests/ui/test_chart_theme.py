"""Every dashboard chart leaves text and background colours to Streamlit's theme, so it reads in light and dark.

Streamlit themes an Altair chart (theme="streamlit", the default) by merging its own config, light or
dark, under the chart's. A colour the chart spec sets itself wins over the theme's: black axis labels
vanish on the dark background, a white background glares. This walks the specs of every chart the
pages draw (chart.to_dict()) and fails on any such colour. The browser test checks the rendered result.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import pytest

from planner.entrypoints import make_plan
from planner.workload import RecommendOptions
from reports.benchmark_result import SweepDoc
from reports.documents import load
from reports.metrics_timeline import MetricsSample, MetricsTimeline
from reports.study_report import STUDY_CHARTS, StudyReport
from tests.result_docs import record, result_of, run_of
from widgets.benchmark import benchmark_charts, latency_cdf
from widgets.plan import memory_chart, roofline_chart
from widgets.studies import _chart

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# Keys of a Vega-Lite spec that colour text, lines of the frame or the background: the theme's to set.
THEME_KEYS = {
    "background",
    "labelColor",
    "titleColor",
    "subtitleColor",
    "domainColor",
    "tickColor",
    "gridColor",
    "symbolStrokeColor",
}
TEXT_PARENTS = {"title", "axis", "axisX", "axisY", "legend", "header", "text"}  # a "color"/"fill" under these


def theme_colours(spec: Any, path: str = "") -> Iterator[str]:
    """Every place in a spec that fixes a colour the theme should choose, as 'dotted.path=value'."""
    if isinstance(spec, dict):
        text_mark = spec.get("type") == "text" or spec.get("mark") == "text"
        for key, value in spec.items():
            where = f"{path}.{key}" if path else key
            parent = path.rsplit(".", 1)[-1]
            if (
                key in THEME_KEYS
                or (key in ("color", "fill", "stroke") and isinstance(value, str))
                and (parent in TEXT_PARENTS or text_mark)
            ):
                yield f"{where}={value}"
            yield from theme_colours(value, where)
    elif isinstance(spec, list):
        for i, item in enumerate(spec):
            yield from theme_colours(item, f"{path}[{i}]")


def _benchmark_result_with_sweep() -> Any:
    fast = run_of([record(0, 0.0, [0.1, 0.2, 0.3]), record(1, 0.0, [0.2, 0.3])], profile="constant:1")
    slow = run_of([record(0, 0.0, [0.5, 0.9, 1.3]), record(1, 0.1, [0.7, 1.0])], profile="constant:2")
    result = result_of([fast, slow], SweepDoc(max_rate_meeting_slo=None, stopped=None, attainment=0.95))
    scrapes = [MetricsSample(t_s=t, running=r, waiting=0, kv_cache_usage=r / 8) for t, r in ((0.0, 0), (1.0, 2))]
    return result.model_copy(update={"metrics": MetricsTimeline(source="preflight", interval_s=1.0, samples=scrapes)})


@cache
def every_chart() -> dict[str, alt.TopLevelMixin]:
    """The charts of the Benchmark, Reports, Engine studies and Plan pages, built as the pages build them."""
    charts: dict[str, alt.TopLevelMixin] = {
        f"benchmark.{name}": chart for name, chart in benchmark_charts(_benchmark_result_with_sweep()).items()
    }
    samples = pd.DataFrame({"run": ["A", "A", "B", "B"], "ms": [10.0, 12.0, 11.0, 15.0]})
    charts["reports.compare_cdf"] = latency_cdf(samples, "ms", "TTFT (ms)")
    study = load(FIXTURES / "engine-study.v1.json")
    assert isinstance(study, StudyReport)
    for spec in STUDY_CHARTS[study.study]:
        charts[f"studies.{spec.title}"] = _chart(study, spec)
    plan = make_plan(RecommendOptions(model="llama-3.1-8b", gpu="h100-sxm"))
    charts["plan.memory"], charts["plan.roofline"] = memory_chart(plan), roofline_chart(plan)
    return charts


def test_the_walk_finds_a_fixed_text_or_background_colour() -> None:
    """The check itself: black labels, a grey title and a white background are each caught."""
    base = alt.Chart(pd.DataFrame({"x": [1, 2]})).mark_line().encode(x="x:Q", y="x:Q")
    assert list(theme_colours(base.to_dict())) == []
    fixed = base.configure_axis(labelColor="black").properties(
        title=alt.TitleParams("t", color="#333333"), background="white"
    )
    found = list(theme_colours(fixed.to_dict()))
    assert {f.split("=")[0].rsplit(".", 1)[-1] for f in found} == {"labelColor", "color", "background"}, found
    text = alt.Chart(pd.DataFrame({"x": [1]})).mark_text(color="black").encode(x="x:Q", text="x:Q")
    assert list(theme_colours(text.to_dict())) == ["mark.color=black"]


@pytest.mark.parametrize("name", sorted(every_chart()))
def test_no_chart_fixes_a_text_or_background_colour(name: str) -> None:
    spec = every_chart()[name].to_dict()
    assert list(theme_colours(spec)) == [], f"{name} sets colours the dark theme cannot override"
