"""Plan: pick a model, hardware and workload; see ranked serving options, why, and how to launch them."""

import altair as alt
import streamlit as st
from pydantic import ValidationError

from planner.catalog import load_catalog
from planner.entrypoints import make_plan
from planner.errors import PlannerError
from planner.recommend import Plan
from planner.tables import capacity_frame, memory_frame, option_label, options_frame, roofline_frames, unfit_frame
from planner.workload import RecommendOptions

FIELDS = RecommendOptions.model_fields


@st.cache_data(show_spinner="Planning (measuring this CPU the first time)...")
def _plan(options_json: str) -> Plan:
    return make_plan(RecommendOptions.model_validate_json(options_json))


cat = load_catalog()
st.title("Plan")
st.caption("Every number is computed from the model's shape and the hardware's figures; each option shows its working.")
c = st.columns(3)
model = c[0].selectbox("Model", list(cat.models), index=list(cat.models).index("llama-3.1-8b"), key="plan_model",
                       format_func=lambda i: cat.models[i].name, help=FIELDS["model"].description)
path = c[0].text_input("...or a config.json / .gguf path", key="plan_model_path")
gpu_ids = ["detected", "cpu", *cat.gpus]
names = {"detected": "this machine (detected)", "cpu": "this CPU"} | {g: s.name for g, s in cat.gpus.items()}
gpu = c[1].selectbox("Hardware", gpu_ids, index=gpu_ids.index("h100-sxm"), key="plan_gpu",
                     format_func=names.get, help=FIELDS["gpu"].description)
gpus = c[1].number_input("GPUs", 1, 1024, 1, key="plan_gpus", help=FIELDS["gpus"].description)
price = c[1].number_input("$ per GPU-hour", 0.0, 1000.0, cat.gpus[gpu].price_per_hour if gpu in cat.gpus else 0.0,
                          key=f"plan_price_{gpu}", help=FIELDS["price_per_hour"].description)
slo = c[2].selectbox("SLO profile", list(cat.slo_profiles), key="plan_slo", help=FIELDS["slo"].description,
                     format_func=lambda s: f"{cat.slo_profiles[s].label} (TTFT {cat.slo_profiles[s].ttft_ms}, "
                                           f"TPOT {cat.slo_profiles[s].tpot_ms} ms)")
qps = c[2].number_input("Target req/s (0: none)", 0.0, 1e6, 0.0, key="plan_qps", help=FIELDS["qps"].description)
c = st.columns(4)
context = c[0].number_input("Context", 16, 1_000_000, 8192, key="plan_context", help=FIELDS["context"].description)
concurrency = c[1].number_input("Concurrency", 1, 100_000, 32, key="plan_concurrency",
                                help=FIELDS["concurrency"].description)
input_tokens = c[2].number_input("Input tokens", 1, 1_000_000, 1024, key="plan_input",
                                 help=FIELDS["input_tokens"].description)
output_tokens = c[3].number_input("Output tokens", 1, 1_000_000, 256, key="plan_output",
                                  help=FIELDS["output_tokens"].description)
try:
    opts = RecommendOptions(model=path.strip() or model, gpu=gpu, gpus=gpus, context=context, concurrency=concurrency,
                            input_tokens=input_tokens, output_tokens=output_tokens, slo=slo, qps=qps or None,
                            price_per_hour=price if gpu in cat.gpus else None)
    plan = _plan(opts.model_dump_json())
except ValidationError as exc:
    st.error("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))
    st.stop()
except PlannerError as exc:
    st.error(str(exc))
    st.stop()

if not plan.options:
    st.error(f"Nothing fits {plan.model.name} on this hardware; see why below.")
else:
    best, p = plan.options[0], plan.options[0].prediction
    st.subheader(f"Best: {best.engine_label}, {best.format_label}" + (f", TP {best.tp}" if best.tp > 1 else ""))
    m = st.columns(4)
    m[0].metric("TTFT", f"{p.ttft_ms:,.0f} ms")
    m[1].metric("TPOT", f"{p.tpot_ms:,.1f} ms", help=f"at batch {p.batch}")
    m[2].metric("Output throughput", f"{p.throughput_tok_s:,.0f} tok/s")
    m[3].metric("Meets SLO", "yes" if best.meets_slo else "no", help="; ".join(best.slo_misses) or None)
    st.dataframe(options_frame(plan), hide_index=True)
    # Extension point: when the Benchmark page exists, plan.bundled_option() is what "benchmark this plan" hands it.
tabs = st.tabs(["Why and how to launch", "Memory", "Roofline", "Capacity", "Cannot run here"])
with tabs[0]:
    if plan.options:
        chosen = st.selectbox("Option", plan.options, key="plan_option", format_func=option_label)
        st.markdown("\n".join(f"- {why}" for why in chosen.why + [f"SLO miss: {s}" for s in chosen.slo_misses]))
        st.code(chosen.launch, language="bash")
with tabs[1]:
    if plan.options:
        st.altair_chart(alt.Chart(memory_frame(plan)).mark_bar().encode(
            x=alt.X("GiB:Q", stack="zero", title="GiB per device"), y=alt.Y("option:N", sort=None, title=None),
            color="part:N", tooltip=["option", "part", alt.Tooltip("GiB:Q", format=".2f")]))
with tabs[2]:
    if plan.options:
        roof, points = roofline_frames(plan)
        log = alt.Scale(type="log")
        st.altair_chart(alt.Chart(roof).mark_line().encode(
            x=alt.X("FLOP/byte:Q", scale=log), y=alt.Y("TFLOP/s per device:Q", scale=log), color="roof:N")
            + alt.Chart(points).mark_point(filled=True, size=80).encode(
            x="FLOP/byte:Q", y="TFLOP/s per device:Q", shape="bound:N", tooltip=list(points.columns)))
        st.caption("Decode steps at the planned batch: left of the knee they are memory-bound.")
with tabs[3]:
    st.dataframe(capacity_frame(plan), hide_index=True)
with tabs[4]:
    st.dataframe(unfit_frame(plan), hide_index=True)
for note in plan.notes:
    st.caption(note)
