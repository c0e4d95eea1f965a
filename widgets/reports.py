"""Pieces of the Reports page: the history table, one document, and a comparison. Logic lives in `reports`."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from reports.compare import Comparison, latency_samples
from reports.compare_markdown import comparison_to_markdown, meaning
from reports.documents import Document
from reports.history import HistoryEntry
from reports.readiness_report import ReadinessReport
from reports.study_report import StudyReport
from widgets.benchmark import latency_cdf, result_charts, run_summaries
from widgets.checklist import results_by_category, verdict_banner
from widgets.studies import study_view

# Badge colours under white text: 5.1, 4.9 and 5.4 to 1, so the verdict reads the same in the light and the
# dark theme (as text colour they fell to 3.5-3.9 to 1 on the dark background).
GREEN, AMBER, RED = "#1a7f37", "#9a6700", "#cf222e"
VERDICT_COLOURS = {
    "READY": GREEN,
    "READY_WITH_WARNINGS": AMBER,
    "NOT_READY": RED,
    "INCOMPLETE": RED,
    "VALID": GREEN,
    "INVALID": RED,
    "CANCELLED": AMBER,
}


def history_table(entries: list[HistoryEntry]) -> None:
    """The readable documents, newest first, the verdict cell a coloured badge."""
    rows = [
        {
            "id": e.id,
            "kind": e.kind,
            "started (UTC)": e.started_at,
            "verdict": e.verdict,
            "target": e.target,
            "model": e.model,
            "label": e.label,
            "headline": e.headline,
        }
        for e in entries
    ]
    frame = pd.DataFrame(rows)
    styled = frame.style.map(
        lambda v: (
            f"background-color: {VERDICT_COLOURS[v]}; color: #ffffff; font-weight: 600" if v in VERDICT_COLOURS else ""
        ),
        subset=["verdict"],
    )
    st.dataframe(styled, hide_index=True, key="reports_table")


def unreadable_files(entries: list[HistoryEntry]) -> None:
    if entries:
        with st.expander(f"{len(entries)} file(s) in the history could not be read (kept, not deleted)"):
            for e in entries:
                st.markdown(f"- `{e.file}`: {e.unreadable}")


def document_view(doc: Document) -> None:
    """The same views the Checklist, Benchmark and Engine studies pages show for a fresh run."""
    if isinstance(doc, StudyReport):
        study_view(doc)
        return
    if isinstance(doc, ReadinessReport):
        verdict_banner(doc)
        results_by_category(doc)
        if doc.benchmark is not None and doc.benchmark.runs:
            with st.expander("The measured run"):
                run_summaries(doc.benchmark)
        return
    run_summaries(doc)
    if any(run.records for run in doc.runs):
        result_charts(doc)


def comparison_view(result: Comparison, a: Document, b: Document) -> None:
    if result.comparable:
        st.success("Comparable runs: the same workload, profile, model and SLO.")
    else:
        st.warning("Not comparable: " + "; ".join(result.reasons))
    if result.verdict is not None:
        st.markdown(f"**Verdict:** {result.verdict.a} → {result.verdict.b}")
    if result.metrics:
        rows = [
            {
                "metric": m.name,
                "A": m.a,
                "B": m.b,
                "change %": m.delta_pct,
                "95% interval": "-" if m.ci95_pct is None else f"{m.ci95_pct[0]:+.1f}% .. {m.ci95_pct[1]:+.1f}%",
                "meaning": meaning(m).replace("**", ""),
            }
            for m in result.metrics
        ]
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="reports_compare_table")
    if result.checks:
        st.dataframe(
            pd.DataFrame(
                [
                    {"check": c.id, "A": c.a.value if c.a else "new", "B": c.b.value if c.b else "gone"}
                    for c in result.checks
                ]
            ),
            hide_index=True,
        )
    if result.environment:
        st.caption("Environment differences: " + "; ".join(f"{e.name}: {e.a} → {e.b}" for e in result.environment))
    samples = pd.DataFrame(latency_samples(a, b), columns=["run", "metric", "ms"])
    if not samples.empty:  # A and B overlaid, one chart per metric: the same CDF the Benchmark page draws
        for col, (metric, frame) in zip(st.columns(2), samples.groupby("metric", sort=False), strict=False):
            col.altair_chart(latency_cdf(frame, "ms", f"{str(metric).removesuffix(' ms')} (ms)"))
    st.download_button(
        "Download comparison (Markdown)",
        comparison_to_markdown(result),
        file_name=f"preflight-compare-{a.id}-{b.id}.md",
        mime="text/markdown",
        key="reports_compare_download",
    )
