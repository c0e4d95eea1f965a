"""The one target every measuring page uses, picked once in the sidebar and held in the session.

A newcomer should not type the same URL and key on the Benchmark page and again on the
Checklist page, so the target lives in the sidebar of the pages that measure and in the
session, and the pages read it with `current_target`. For a remote endpoint a preset fills the URL a
server kind listens on by default, and "Test connection" asks the endpoint what it offers
(`checks.connection`) before anything is measured.

The API key stays in this browser session's memory: a password field, never shown back,
never written to disk, and never part of a URL or a report (documents keep only whether a
key was set).
"""

from __future__ import annotations

import streamlit as st

from checks.connection import ConnectionReport, connect, facts
from checks.presets import PRESETS
from engine.formats import WEIGHT_FORMATS

KINDS = ("Bundled engine", "Remote endpoint")
CUSTOM = "Custom URL"
PRESET_NAMES = {p.name: p for p in PRESETS.values()}
TARGET_NEEDED = "Enter the endpoint's base URL in the sidebar (or pick its server kind there), then come back."
CONNECTION_KEY = "target_connection"  # (what was tested, the report): the key itself is not part of it


def _apply_preset() -> None:
    """A chosen server kind fills its default local URL (the user can still edit it)."""
    preset = PRESET_NAMES.get(st.session_state.get("target_preset", CUSTOM))
    if preset is not None:
        st.session_state["target_url"] = preset.base_url


def _tested(url: str, key: str | None, model: str | None, api: str) -> tuple[str, bool, str | None, str]:
    """What a connection report was taken for; the key counts only as given or not."""
    return (url, bool(key), model, api)


def _connection_view(report: ConnectionReport) -> None:
    if report.ok:
        ttft = f", first token {report.ttft_ms:.0f} ms" if report.ttft_ms is not None else ""
        st.success(f"Ready to measure: {report.model}{ttft}.")
    else:
        st.error("Not ready: " + "; ".join(report.problems or ["the probe request did not complete"]))
    if report.reachable:
        st.markdown("\n".join(f"- {label}: {text}" for label, text in facts(report)))


VALUE_KEYS = (
    "target_kind",
    "target_quant",
    "target_threads",
    "target_eager",
    "target_weights",
    "target_preset",
    "target_url",
    "target_api_key",
    "target_api",
    "target_model",
)


def keep_target() -> None:
    """Keep the picker's values on runs that do not draw it (a page without the picker, or the other
    target kind): Streamlit forgets a widget's value when a run does not draw it, and writing each
    value back to itself first keeps it. `app.py` calls this on every run, the picker again."""
    for name in VALUE_KEYS:
        if name in st.session_state:
            st.session_state[name] = st.session_state[name]


def target_sidebar() -> None:
    """The picker, in the sidebar of the pages that measure (Home, Benchmark, Checklist)."""
    keep_target()
    with st.sidebar:
        st.subheader("Target")
        kind = st.radio("Target", KINDS, key="target_kind", label_visibility="collapsed")
        if kind == KINDS[0]:
            st.selectbox("Weight format", WEIGHT_FORMATS, index=WEIGHT_FORMATS.index("int4"), key="target_quant")
            st.number_input("Server threads (0 = torch default)", 0, 64, 1, key="target_threads")
            st.checkbox(
                "Eager decode (skip the compiled decode step)",
                key="target_eager",
                help="The server decodes with a compiled step by default wherever it works (a C++ compiler on the "
                "CPU): built once per machine, about a minute, while the server reports loading; seconds after. "
                "Eager decode starts at once and decodes slower.",
            )
            st.text_input(
                "Compressed weights directory (optional)",
                key="target_weights",
                placeholder="written by python -m engine compress",
                help="Serve this directory (--weights DIR) instead of converting the GGUF; it brings its own format.",
            )
            return
        st.selectbox("Server", [CUSTOM, *PRESET_NAMES], key="target_preset", on_change=_apply_preset)
        preset = PRESET_NAMES.get(st.session_state.get("target_preset", CUSTOM))
        if preset is not None:
            st.caption(f"{preset.name}: {preset.metrics_hint}. Start it with `{preset.launch}`.")
        url = st.text_input("Base URL", placeholder="http://127.0.0.1:8000/v1", key="target_url").strip()
        key = st.text_input("API key", type="password", key="target_api_key") or None
        api = st.selectbox("API", ["chat", "completions"], key="target_api")
        model = st.text_input("Model (empty: the first one /v1/models lists)", key="target_model").strip() or None
        if st.button("Test connection", key="target_test", disabled=not url):
            try:
                with st.spinner("Asking the endpoint..."):
                    st.session_state[CONNECTION_KEY] = (_tested(url, key, model, api), connect(url, key, model, api))
            except ValueError as exc:
                st.error(str(exc))
        tested = st.session_state.get(CONNECTION_KEY)
        if tested is not None and tested[0] == _tested(url, key, model, api):
            _connection_view(tested[1])


def current_target() -> dict:
    """The sidebar's target as config values (`BenchmarkConfig` or `ChecklistConfig` fields); an empty
    "target" when a remote URL is still missing."""
    state = st.session_state
    if state.get("target_kind", KINDS[0]) == KINDS[0]:
        values: dict = {
            "target": f"bundled:{state.get('target_quant', 'int4')}",
            "threads": int(state.get("target_threads", 1)) or None,
            "eager": bool(state.get("target_eager", False)),
        }
        weights = str(state.get("target_weights", "")).strip()
        if weights:
            values["weights"] = weights
        return values
    model = str(state.get("target_model", "")).strip() or None
    return {
        "target": str(state.get("target_url", "")).strip(),
        "api_key": state.get("target_api_key") or None,
        "api": state.get("target_api", "chat"),
        "model": model,
    }


def target_line(values: dict) -> None:
    """Which target this page measures and where to change it."""
    if not values.get("target"):
        st.info(TARGET_NEEDED)
        return
    shown = values["target"]
    if shown.startswith("bundled"):
        threads = values.get("threads")
        shown += f", {threads} server thread{'s' * (threads != 1)}" if threads else ", torch's default threads"
        if values.get("eager"):
            shown += ", eager decode"
        if values.get("weights"):
            shown += f", weights {values['weights']} (their own format)"
    elif values.get("model"):
        shown += f", model {values['model']}"
    st.markdown(f"**Target:** `{shown}` (change it in the sidebar)")
