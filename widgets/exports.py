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
from reports.readiness_report import ReadinessReport
from reports.store import DocumentError
from reports.study_report import StudyReport


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


def unsaved_sentence(doc: Document, exc: DocumentError) -> str:
    """Why a run is not in the history, as a sentence with what to do: the store's reason, path and fix."""
    noun = "study" if isinstance(doc, StudyReport) else "report" if isinstance(doc, ReadinessReport) else "result"
    where = f" ({exc.path})" if exc.path is not None else ""
    fix = exc.fix or "fix the history folder"
    return (
        f"Could not save the {noun}: {exc.reason or exc}{where}. The run is kept in this session (download it "
        f"above); {fix} and press Save again."
    )


def saved_note(doc: Document, save_error: DocumentError | None = None) -> None:
    """Where the run went: its id in the history, when the file is there, and the way to the Reports page,
    where earlier runs stay side by side (a new run never replaces an old one). When the job could not save
    it (`save_error`: a full disk, say), the reason as a sentence and a Save again button."""
    history = History(history_dir())
    if (history.root / f"{doc.id}.json").is_file():
        st.caption(f"Saved in the history as `{doc.id}`; earlier runs stay there to open, compare and export.")
    else:
        retry_key = f"save_again_error_{doc.id}"
        error = st.session_state.get(retry_key, save_error)  # the latest try's reason
        if error is not None:
            st.warning(unsaved_sentence(doc, error))
        else:
            st.caption(f"Not in the history (`{doc.id}`): press Save again to keep it there.")
        if st.button("Save again", key=f"save_again_{doc.id}", icon=":material/save:"):
            try:
                history.save(doc)
            except DocumentError as exc:
                st.session_state[retry_key] = exc
            else:
                st.session_state.pop(retry_key, None)
            st.rerun()
    st.page_link("app_pages/reports.py", label="Open the Reports page", icon=":material/history:")
