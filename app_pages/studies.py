"""Engine studies: measure the KV cache, the weight formats, batching, per-layer precision and compression here.

Every finished study is kept in the reports history, like a checklist or benchmark run."""

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from checks.jobs import JobKind
from checks.study_job import StudyConfig
from engine.formats import WEIGHT_FORMATS
from engine.studies.base import MIN_COUNTS
from engine.studies.registry import (
    COMPRESS_SETTINGS,
    PRECISION_SCHEMES,
    STUDIES,
    TITLES,
    StudyOptions,
    option_help,
    parse_sizes,
)
from widgets.common import run_panel
from widgets.exports import downloads, saved_note
from widgets.studies import study_progress, study_view

DEFAULTS = StudyOptions()


def _sizes(col: DeltaGenerator, label: str, field: str) -> tuple[int, ...]:
    default = ",".join(map(str, getattr(DEFAULTS, field)))
    return parse_sizes(col.text_input(label, default, key=f"engine_study_{field}", help=option_help(field)))


def _count(col: DeltaGenerator, label: str, field: str) -> int:
    default = getattr(DEFAULTS, field)
    low = MIN_COUNTS.get(field, 1)  # the box never offers a count the study refuses
    return int(col.number_input(label, low, 8192, default, key=f"engine_study_{field}", help=option_help(field)))


def _options(name: str) -> StudyOptions:
    """Study sizes from the widgets (small values make a quick run); raises ValueError when invalid."""
    c1, c2, c3 = st.columns(3)
    if name == "quant":
        key, help_ = "engine_study_quant_formats", option_help("quant_formats")
        formats = tuple(c1.multiselect("Formats", WEIGHT_FORMATS, WEIGHT_FORMATS, key=key, help=help_))
        eval_tokens = _count(c2, "Eval tokens", "eval_max_tokens")
        decode = _count(c3, "Decode tokens", "quant_decode_tokens")
        key, help_ = "engine_study_quant_cold_load", option_help("quant_cold_load")
        cold = st.checkbox("Time a cold load too", True, key=key, help=help_)
        return StudyOptions(
            quant_formats=formats, eval_max_tokens=eval_tokens, quant_decode_tokens=decode, quant_cold_load=cold
        )
    if name == "precision":
        key, help_ = "engine_study_precision_schemes", option_help("precision_schemes")
        schemes = tuple(c1.multiselect("Schemes", PRECISION_SCHEMES, PRECISION_SCHEMES, key=key, help=help_))
        act_tokens = _count(c2, "Activation tokens", "precision_act_tokens")
        eval_tokens = _count(c3, "Eval tokens", "eval_max_tokens")
        return StudyOptions(precision_schemes=schemes, precision_act_tokens=act_tokens, eval_max_tokens=eval_tokens)
    if name == "compress":
        key, help_ = "engine_study_compress_settings", option_help("compress_settings")
        chosen = c1.multiselect("Settings", COMPRESS_SETTINGS, DEFAULTS.compress_settings, key=key, help=help_)
        eval_tokens = _count(c2, "Eval tokens", "eval_max_tokens")
        decode = _count(c3, "Decode tokens", "quant_decode_tokens")
        return StudyOptions(compress_settings=tuple(chosen), eval_max_tokens=eval_tokens, quant_decode_tokens=decode)
    quant = c1.selectbox("Weight format", WEIGHT_FORMATS, WEIGHT_FORMATS.index("int4"), key="engine_study_quant")
    if name == "kv":
        return StudyOptions(
            quant=quant, kv_lengths=_sizes(c2, "Lengths", "kv_lengths"), kv_tokens=_count(c3, "Tokens", "kv_tokens")
        )
    sizes, steps = _sizes(c2, "Batch sizes", "batch_sizes"), _count(c3, "Decode steps", "batch_steps")
    return StudyOptions(quant=quant, batch_sizes=sizes, batch_steps=steps)


st.title("Engine studies")
st.caption("Measured on this machine with the bundled engine; nothing is simulated. Each run states its conditions.")
name = st.selectbox(
    "Study", list(STUDIES), key="engine_study_name", format_func=lambda study: f"{study}: {TITLES[study]}"
)
try:
    values = StudyConfig.of(name, _options(name)).model_dump()
except ValueError as exc:  # a size the study refuses: say which, and offer no Run
    st.error(str(exc))
    st.button("Run", key="engine_study_run", type="primary", disabled=True)
    st.stop()

# A study runs as a dashboard job (checks/study_job.py): one at a time, visible from any tab, stoppable,
# saved to the history by the job, and not lost when the page reloads.
HINT = "Set the sizes (small values run in seconds, the defaults in minutes) and press Run."
snap = run_panel("engine_study", StudyConfig, values, "Run", JobKind.STUDY, HINT, study_progress)
doc = snap.result
downloads(doc, "engine_study")
saved_note(doc, snap.save_error)
study_view(doc)
