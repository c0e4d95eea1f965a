"""Reports: every saved checklist report, benchmark result and engine study, opened, compared and exported."""

from datetime import UTC, datetime, time

import streamlit as st

from reports.compare import compare
from reports.documents import SHORT_KINDS
from reports.history import Filters, History
from reports.home import history_dir
from reports.store import DocumentError
from widgets.exports import downloads
from widgets.reports import comparison_view, document_view, history_table, unreadable_files

st.title("Reports")
history = History(history_dir())
st.caption(
    f"Saved runs in `{history.root}` (set PREFLIGHT_HOME to keep them elsewhere). "
    "`python -m reports list` shows the same history."
)

target_col, kind_col, since_col = st.columns(3)
target = target_col.text_input("Target contains", key="reports_target") or None
kind = kind_col.selectbox("Kind", ["all", *SHORT_KINDS], key="reports_kind")
since_day = since_col.date_input("Since", value=None, key="reports_since")
since = None if since_day is None else datetime.combine(since_day, time.min, tzinfo=UTC)
filters = Filters(target=target, since=since, kind=None if kind == "all" else kind)
entries = history.entries(filters)
readable = [entry for entry in entries if entry.unreadable is None]
unreadable_files([entry for entry in entries if entry.unreadable is not None])
if not readable and filters != Filters() and any(entry.unreadable is None for entry in history.entries()):
    st.info("No saved run matches these filters.")
    st.stop()
if not readable:
    st.info(
        "No saved runs yet. Every checklist, benchmark and engine study run is saved here; run one from the "
        "Checklist, Benchmark or Engine studies page, or with `python -m checks run`."
    )
    st.stop()

history_table(readable)
ids = [entry.id for entry in readable if entry.id is not None]
names = {entry.id: f"{entry.id} · {entry.kind} · {entry.verdict} · {entry.label or entry.target}" for entry in readable}

tab_open, tab_compare = st.tabs(["Open", "Compare"])
with tab_open:
    chosen = st.selectbox("Report", ids, format_func=names.get, key="reports_open")
    try:
        doc = history.load(chosen)
    except DocumentError as exc:
        st.error(str(exc))
    else:
        downloads(doc, "reports_open")
        document_view(doc)
with tab_compare:
    # a study has no records, so it cannot be compared
    measured = [entry.id for entry in readable if entry.id is not None and entry.kind != "study"]
    if len(measured) < 2:
        st.info("Save a second checklist or benchmark run to compare two.")
    else:
        baseline_id = st.selectbox("A (baseline)", measured, index=1, format_func=names.get, key="reports_a")
        candidate_id = st.selectbox("B (candidate)", measured, index=0, format_func=names.get, key="reports_b")
        try:
            baseline, candidate = history.load(baseline_id), history.load(candidate_id)
        except DocumentError as exc:
            st.error(str(exc))
        else:
            comparison_view(compare(baseline, candidate), baseline, candidate)
