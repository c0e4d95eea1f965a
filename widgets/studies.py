"""How an engine study looks on a page: its charts, tables, conditions and downloads.

The Engine studies page shows a fresh run with it and the Reports page a saved one, so
both show the same thing. Which charts a study has is `reports.study_report.STUDY_CHARTS`
and `PARETO_CHARTS`, the same lists the HTML export draws.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from checks.jobs import Job, JobState
from engine.studies.registry import StudyResult, format_study, study_frame
from reports.study_report import PARETO_CHARTS, STUDY_CHARTS, ParetoChart, StudyChart, StudyReport

QUALITY_COLUMNS = ["format", "perplexity", "mean_kl_nats", "top1_agreement", "scored_tokens"]
PRECISION_COLUMNS = [
    "scheme",
    "weight_rel_fro",
    "weight_max_abs",
    "output_rel_err",
    "perplexity",
    "mean_kl_nats",
    "top1_agreement",
    "most_sensitive",
]


COMPRESS_COLUMNS = [
    "setting",
    "weight_mib",
    "bytes_vs_fp32",
    "load_s",
    "prefill_tok_s",
    "decode_tok_s",
    "decode_vs_fp32",
    "perplexity",
    "mean_kl_nats",
    "top1_agreement",
    "pareto_size",
    "pareto_speed",
    "why_no_saving",
]


def study_result(doc: StudyReport) -> StudyResult:
    """The engine's view of a saved study, for the console table the CLI prints."""
    return StudyResult(doc.study, dict(doc.conditions), [dict(r) for r in doc.rows], list(doc.notes))


def _chart(doc: StudyReport, spec: StudyChart) -> alt.Chart:
    """Bars over a categorical x (weight formats, settings), one line per series over a numeric one."""
    series = spec.series(doc)
    frame = pd.DataFrame([{spec.x: x, spec.y_label: y, "series": label} for label, points in series for x, y in points])
    categorical = any(isinstance(x, str) for _, points in series for x, _ in points)
    mark = alt.Chart(frame).mark_bar() if categorical else alt.Chart(frame).mark_line(point=True)
    colour = {"color": alt.Color("series:N", title=None)} if len(spec.ys) > 1 else {}
    # The sizes a study ran are a handful of exact values (16, 32, ... tokens; batch 1, 2, 4): an ordinal axis
    # labels each one as it was run, and a one-point study still shows its point (a quantitative axis over
    # one value labelled it "3.000000" and clipped the point).
    x = alt.X(f"{spec.x}:{'N' if categorical else 'O'}", sort=None, title=spec.x_label)
    return mark.encode(x=x, y=alt.Y(f"{spec.y_label}:Q"), tooltip=[spec.x, spec.y_label], **colour).properties(
        title=spec.title, height=260
    )


def precision_heatmap(doc: StudyReport) -> alt.Chart:
    """Layers down, schemes across, colour = output error on real activations (log scale: the schemes differ 100x).

    A layer a scheme reproduces exactly (int4-g32 on the file's own Q4_1 grid) has no logarithm: it is drawn
    as an empty cell and its tooltip says 0.
    """
    rows = [r for r in doc.rows if r.get("scope") == "layer"]
    frame = pd.DataFrame(
        {
            "layer": [r["layer"] for r in rows],
            "scheme": [r["scheme"] for r in rows],
            "output error": [r["output_rel_err"] for r in rows],
            "colour": [r["output_rel_err"] if r["output_rel_err"] else None for r in rows],  # type: ignore[operator]
        }
    )
    layers = list(dict.fromkeys(frame["layer"]))
    schemes = list(dict.fromkeys(frame["scheme"]))
    return (
        alt.Chart(frame)
        .mark_rect()
        .encode(
            x=alt.X("scheme:N", sort=schemes, title="scheme"),
            y=alt.Y("layer:N", sort=layers, title="layer"),
            color=alt.Color("colour:Q", scale=alt.Scale(type="log", scheme="viridis"), title="output rel err"),
            tooltip=["layer", "scheme", alt.Tooltip("output error:Q", format=".2e")],
        )
        .properties(title="Output error per layer and scheme", height=max(260, 9 * len(layers)))
    )


def pareto_chart(doc: StudyReport, spec: ParetoChart) -> alt.Chart:
    """Every measured setting as a labelled point, the frontier the study marked (engine/studies/pareto.py)
    joined in order of x: the same points and marks as the HTML export's chart (`ParetoChart.points`).

    The y axis is symlog (`ParetoChart.symlog`): linear near 0, logarithmic beyond.
    """
    measured = spec.points(doc)
    frame = pd.DataFrame(
        {
            "setting": [p.label for p in measured],
            "x": [p.x for p in measured],
            "mean KL": [p.y for p in measured],
            "frontier": ["on the frontier" if p.on_front else "dominated" for p in measured],
        }
    )
    y = alt.Y("mean KL:Q", scale=alt.Scale(type="symlog", constant=spec.symlog), title=spec.y_label)
    x = alt.X("x:Q", title=spec.x_label)
    base = alt.Chart(frame).encode(x=x, y=y)
    points = base.mark_point(filled=True, size=70).encode(
        color=alt.Color("frontier:N", title=None),
        tooltip=["setting", alt.Tooltip("x:Q", title=spec.x_label), "mean KL"],
    )
    labels = base.mark_text(align="left", dx=6, dy=-6, fontSize=10).encode(text="setting:N")
    line = (
        base.transform_filter(alt.datum.frontier == "on the frontier").mark_line(strokeDash=[4, 3]).encode(order="x:Q")
    )
    return (line + points + labels).properties(title=spec.title, height=300)


def _compress_view(doc: StudyReport, frame: pd.DataFrame) -> None:
    """The Pareto charts, then the table a reader decides with: size, speed, quality and what saves nothing."""
    specs = PARETO_CHARTS["compress"]
    for col, spec in zip(st.columns(len(specs)), specs, strict=True):
        col.altair_chart(pareto_chart(doc, spec))
    st.dataframe(frame[[c for c in COMPRESS_COLUMNS if c in frame.columns]], hide_index=True)


def _precision_view(doc: StudyReport, frame: pd.DataFrame) -> None:
    """The model rows (quality per scheme, most sensitive layers) and the per-layer heatmap."""
    model = frame[frame["scope"] == "model"]
    st.dataframe(model[[c for c in PRECISION_COLUMNS if c in model.columns]], hide_index=True)
    st.altair_chart(precision_heatmap(doc))


def study_view(doc: StudyReport) -> None:
    specs = STUDY_CHARTS.get(doc.study, ())
    for col, spec in zip(st.columns(len(specs)) if specs else [], specs, strict=True):
        col.altair_chart(_chart(doc, spec))
    frame = study_frame(study_result(doc))
    if doc.study == "quant" and set(QUALITY_COLUMNS) <= set(frame.columns):
        st.dataframe(frame[QUALITY_COLUMNS], hide_index=True)
    if doc.study == "precision" and "scope" in frame.columns:
        _precision_view(doc, frame)
    if doc.study == "compress" and "setting" in frame.columns:
        _compress_view(doc, frame)
    st.dataframe(frame, hide_index=True)
    for note in doc.notes:
        st.caption(note)
    with st.expander("Conditions, console table and the command that repeats it"):
        st.code(format_study(study_result(doc)), language=None)
        st.code(doc.command, language="bash")


@st.fragment(run_every=1.0)
def study_progress(job: Job) -> None:
    """A running study: what it measures now (its own progress lines) and Stop."""
    snap = job.snapshot()
    if snap.state != JobState.RUNNING:
        st.rerun()  # the whole page redraws with the study
    st.info(f"{snap.status} ({snap.elapsed_s:.0f} s)")
    if st.button("Stop", key="engine_study_stop"):
        job.cancel()
