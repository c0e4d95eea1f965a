"""The download buttons of a document: every export format its kind has (`reports.exports`).

The Benchmark, Checklist, Engine studies and Reports pages all offer a document the same
way. A result with every record can be megabytes, and a page reruns on every click, so
each export is built once per document id and kept in the session.
"""

from __future__ import annotations

import streamlit as st

from reports.documents import Document
from reports.exports import export, formats_for
from reports.history import History
from reports.home import history_dir


def downloads(doc: Document, key: str) -> None:
    """Every export of one document (reports.exports); built once per document id, not on every rerun."""
    cache_key = f"{key}_exports"
    cached = st.session_state.get(cache_key)
    if cached is None or cached[0] != doc.id:
        cached = (doc.id, {f.label: (export(doc, f.name), f.mime, f.extension) for f in formats_for(doc)})
        st.session_state[cache_key] = cached
    columns = st.columns(len(cached[1]))
    for col, (label, (text, mime, ext)) in zip(columns, cached[1].items(), strict=True):
        col.download_button(
            f"Download {label}", text, file_name=f"preflight-{doc.id}.{ext}", mime=mime, key=f"{key}_download_{ext}"
        )


def saved_note(doc: Document) -> None:
    """Where the run went: its id in the history, when the file is there, and the way to the Reports page,
    where earlier runs stay side by side (a new run never replaces an old one)."""
    if (History(history_dir()).root / f"{doc.id}.json").is_file():
        st.caption(f"Saved in the history as `{doc.id}`; earlier runs stay there to open, compare and export.")
    else:
        st.caption(f"Not in the history (`{doc.id}`): the history folder could not be written; download it above.")
    st.page_link("app_pages/reports.py", label="Open the Reports page", icon=":material/history:")
