"""Engine studies: measure the KV cache, the weight formats and batching on this machine."""

import json

import altair as alt
import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from engine.errors import EngineError
from engine.formats import WEIGHT_FORMATS
from engine.studies.registry import STUDIES, TITLES, StudyOptions, format_study, option_help, parse_sizes, study_frame


def _chart(frame: pd.DataFrame, x: str, y: str, title: str, color: str | None = None) -> alt.Chart:
    """Bars over weight formats, lines (one per `color` value) over a numeric size."""
    chart = alt.Chart(frame).mark_bar() if x == "format" else alt.Chart(frame).mark_line(point=True)
    extra = {"color": color} if color else {}
    return chart.encode(x=alt.X(x, sort=None), y=y, tooltip=[x, y], **extra).properties(title=title, height=260)


DEFAULTS = StudyOptions()


def _sizes(col: DeltaGenerator, label: str, field: str) -> tuple[int, ...]:
    default = ",".join(map(str, getattr(DEFAULTS, field)))
    return parse_sizes(col.text_input(label, default, key=f"engine_study_{field}", help=option_help(field)))


def _count(col: DeltaGenerator, label: str, field: str) -> int:
    default = getattr(DEFAULTS, field)
    return int(col.number_input(label, 1, 8192, default, key=f"engine_study_{field}", help=option_help(field)))


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
    quant = c1.selectbox("Weight format", WEIGHT_FORMATS, WEIGHT_FORMATS.index("int4"), key="engine_study_quant")
    if name == "kv":
        return StudyOptions(
            quant=quant, kv_lengths=_sizes(c2, "Lengths", "kv_lengths"), kv_tokens=_count(c3, "Tokens", "kv_tokens")
        )
    sizes, steps = _sizes(c2, "Batch sizes", "batch_sizes"), _count(c3, "Decode steps", "batch_steps")
    return StudyOptions(quant=quant, batch_sizes=sizes, batch_steps=steps)


st.title("Engine studies")
st.caption("Measured on this machine with the bundled engine; nothing is simulated. Each run states its conditions.")
results = st.session_state.setdefault("engine_study_results", {})
name = st.selectbox("Study", list(STUDIES), format_func=lambda n: f"{n}: {TITLES[n]}", key="engine_study_name")
try:
    options = _options(name)
except ValueError as exc:
    options = None
    st.error(str(exc))

if st.button("Run", key="engine_study_run", type="primary", disabled=options is None):
    with st.status(f"Running the {name} study...", expanded=True) as status:
        try:
            results[name] = STUDIES[name](options, progress=status.write)
            status.update(label=f"The {name} study finished", state="complete", expanded=False)
        except (EngineError, ValueError) as exc:
            status.update(label=f"The {name} study failed", state="error")
            st.error(str(exc))

if name not in results:
    st.info("Set the sizes (small values run in seconds, the defaults in minutes) and press Run.")
    st.stop()

result = results[name]
frame = study_frame(result)
if name == "kv":
    on_off = frame.melt("seq_len", ["cached_decode_tok_s", "uncached_decode_tok_s"], "kv_cache", "decode_tok_s")
    on_off["kv_cache"] = on_off["kv_cache"].map({"cached_decode_tok_s": "on", "uncached_decode_tok_s": "off"})
    st.altair_chart(_chart(on_off, "seq_len", "decode_tok_s", "Decode tok/s vs sequence length", "kv_cache"))
elif name == "quant":
    left, right = st.columns(2)
    left.altair_chart(_chart(frame, "format", "decode_tok_s", "Decode tok/s"))
    right.altair_chart(_chart(frame, "format", "weight_mib", "Weight memory (MiB)"))
    st.dataframe(frame[["format", "perplexity", "mean_kl_nats", "top1_agreement", "scored_tokens"]], hide_index=True)
else:
    left, right = st.columns(2)
    left.altair_chart(_chart(frame, "batch_size", "aggregate_tok_s", "Aggregate decode tok/s"))
    right.altair_chart(_chart(frame, "batch_size", "per_token_latency_ms", "Per-token latency (ms)"))
st.dataframe(frame, hide_index=True)
with st.expander("Conditions and console table"):
    st.code(format_study(result), language=None)
st.download_button(
    "Download JSON",
    json.dumps(result.to_dict(), indent=2),
    file_name=f"study-{name}.json",
    mime="application/json",
    key="engine_study_download",
)
