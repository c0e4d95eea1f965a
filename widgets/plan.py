"""The Plan page's widgets: the planning form, the best option, the option details and the charts.

Every value goes to `planner.workload.RecommendOptions`, which validates it; the tables
are `planner.tables`' builders, so app_pages/plan.py stays a short running order.
"""

from __future__ import annotations

import altair as alt
import streamlit as st
from pydantic import ValidationError
from streamlit.delta_generator import DeltaGenerator

from checks.load.calibration import calibratable_runs, calibration_runs, calibration_step_logs
from checks.presets import PRESETS
from planner.assumptions import calibration_line, version_line
from planner.calibrate import calibrate, format_fit
from planner.calibration import DEFAULT_PASS_SPREAD, CalibrationDoc, save_calibration
from planner.catalog import Catalog
from planner.custom_gpu import format_custom_gpu
from planner.devices import CUSTOM_CHOICE, device_choices
from planner.entrypoints import make_plan
from planner.errors import PlannerError
from planner.launch import serve_url
from planner.recommend import Plan, PlanOption
from planner.slo_targets import slo_choices
from planner.tables import (
    assumptions_frame,
    calibration_frame,
    capacity_frame,
    memory_frame,
    option_label,
    options_frame,
    roofline_frames,
    unfit_frame,
)
from planner.vllm_memory import version_choices
from planner.workload import RecommendOptions
from reports.history import History
from reports.home import history_dir, private_dir
from reports.store import DocumentError
from reports.validation import pydantic_message
from widgets.target import CUSTOM, KINDS

# The plan's engines that Preflight has a server preset for (checks/presets.py): "benchmark this" picks it.
PRESET_FOR_ENGINE = {"vllm": "vllm", "vllm-ray": "vllm", "sglang": "sglang", "llama.cpp": "llamacpp"}

FIELDS = RecommendOptions.model_fields
DEFAULT_MODEL = "llama-3.1-8b"
DEFAULT_HARDWARE = "h100-sxm"


@st.cache_data(show_spinner="Planning (measuring this CPU the first time)...")
def _plan(options_json: str) -> Plan:
    return make_plan(RecommendOptions.model_validate_json(options_json))


def plan_inputs(catalog: Catalog) -> dict:
    """Model (catalog id or a file path), hardware, SLO and workload, as RecommendOptions' fields."""
    models, slos, hardware = catalog.models, slo_choices(), device_choices(catalog)
    model_col, hardware_col, slo_col = st.columns(3)
    model = model_col.selectbox(
        "Model",
        list(models),
        index=list(models).index(DEFAULT_MODEL),
        key="plan_model",
        format_func=lambda model_id: models[model_id].name,
        help=FIELDS["model"].description,
    )
    path = model_col.text_input("...or a config.json / .gguf path", key="plan_model_path")
    gpu = hardware_col.selectbox(
        "Hardware",
        list(hardware),
        index=list(hardware).index(DEFAULT_HARDWARE),
        key="plan_gpu",
        format_func=hardware.get,
        help=FIELDS["gpu"].description,
    )
    gpus, price, choice, version = 1, 0.0, gpu, None
    gpu_settings: dict[str, object] = {}
    if choice != "cpu":  # a GPU count, price and vLLM release mean nothing for this CPU (vLLM needs a GPU)
        gpus = hardware_col.number_input("GPUs", 1, 1024, 1, key="plan_gpus", help=FIELDS["gpus"].description)
        catalog_price = catalog.gpus[gpu].price_per_hour if gpu in catalog.gpus else 0.0
        price = hardware_col.number_input(
            "$ per GPU-hour",
            0.0,
            1000.0,
            catalog_price,
            key=f"plan_price_{choice}",
            help=FIELDS["price_per_hour"].description,
        )
        version = engine_version_input(hardware_col, catalog)
        gpu_settings = gpu_settings_input(hardware_col)
    slo = slo_col.selectbox(
        "SLO profile",
        list(slos),
        key="plan_slo",
        help=FIELDS["slo"].description,
        format_func=lambda name: f"{name} ({slos[name].describe()})",
    )
    qps = slo_col.number_input("Target req/s (0: none)", 0.0, 1e6, 0.0, key="plan_qps", help=FIELDS["qps"].description)
    if choice == CUSTOM_CHOICE:
        gpu = custom_gpu_text()
    context_col, concurrency_col, input_col, cached_col, output_col = st.columns(5)
    context = context_col.number_input(
        "Context", 16, 1_000_000, 8192, key="plan_context", help=FIELDS["context"].description
    )
    concurrency = concurrency_col.number_input(
        "Concurrency", 1, 100_000, 32, key="plan_concurrency", help=FIELDS["concurrency"].description
    )
    input_tokens = input_col.number_input(
        "Input tokens", 1, 1_000_000, 1024, key="plan_input", help=FIELDS["input_tokens"].description
    )
    cached_tokens = cached_col.number_input(
        "Cached prompt tokens",
        0,
        1_000_000,
        0,
        key="plan_cached_input",
        help=FIELDS["cached_input_tokens"].description,
    )
    output_tokens = output_col.number_input(
        "Output tokens", 1, 1_000_000, 256, key="plan_output", help=FIELDS["output_tokens"].description
    )
    return {
        "model": path.strip() or model,
        "gpu": gpu,
        "gpus": gpus,
        "context": context,
        "concurrency": concurrency,
        "input_tokens": input_tokens,
        "cached_input_tokens": cached_tokens,
        "output_tokens": output_tokens,
        "slo": slo,
        "qps": qps or None,
        "price_per_hour": price if gpu in catalog.gpus or choice == CUSTOM_CHOICE else None,
        "engine_version": version,
        **gpu_settings,
        "calibration": calibration_input(),
    }


TP_TRANSPORT_LABELS = {
    "auto": "auto (from the GPU catalog)",
    "p2p": "peer-to-peer (NVLink / PCIe P2P)",
    "host": "through host memory or network",
}
SAMPLER_LABELS = {None: "the release's default", "flashinfer": "FlashInfer", "pytorch": "PyTorch (no FlashInfer)"}


def gpu_settings_input(col: DeltaGenerator) -> dict[str, object]:
    """What a user can read off their own setup and vLLM's start-up log: how the TP group's GPUs reach each
    other, the sampler vLLM fell back to, and the CUDA-graph estimate it printed (0: not charged)."""
    with col.expander("TP links, vLLM sampler, CUDA-graph estimate"):
        transport = _labelled_choice("TP links", TP_TRANSPORT_LABELS, "tp_transport")
        sampler = _labelled_choice("vLLM sampler", SAMPLER_LABELS, "vllm_sampler")
        graphs = st.number_input(
            "vLLM CUDA-graph estimate (GiB, 0: not charged)",
            0.0,
            1024.0,
            0.0,
            key="plan_cuda_graph_reserve",
            help=FIELDS["cuda_graph_reserve_gib"].description,
        )
    return {"tp_transport": transport, "vllm_sampler": sampler, "cuda_graph_reserve_gib": graphs or None}


def _labelled_choice(label: str, labels: dict, field: str) -> object:
    """A select box over `labels`' keys, shown by their labels, keyed and explained by a RecommendOptions field."""
    return st.selectbox(
        label, list(labels), key=f"plan_{field}", format_func=labels.get, help=FIELDS[field].description
    )


def engine_version_input(col: DeltaGenerator, catalog: Catalog) -> str | None:
    """vLLM's release, one per memory rule of engines.json (`vllm_versions`); the planner default is
    passed as no version, so the figures say "planner default" as the CLI's do without --engine-version."""
    table = catalog.engines_file.vllm_versions
    choices = version_choices(table)
    picked = col.selectbox(
        "vLLM version",
        list(choices),
        index=list(choices).index(table.default),
        key="plan_engine_version",
        format_func=choices.get,
        help=FIELDS["engine_version"].description,
    )
    return None if picked == table.default else picked


def calibration_input() -> str | None:
    """ "Calibrate from a run": fit the bundled engine's values to saved benchmarks, or name a calibration
    file; returns the file the plan applies (None: the catalog's figures)."""
    with st.expander("Calibrate from a run"):
        history = History(history_dir())
        saved = {e.id: e for e in calibratable_runs(history) if e.id}
        if not saved:
            st.caption(
                "No saved benchmark of the bundled engine at a fixed concurrency yet: run one on the Benchmark "
                "page (load profile sync or concurrency:N) and it appears here."
            )
        else:
            label = {i: f"{i} · {e.target} · {e.headline}" for i, e in saved.items()}
            fit_col, held_col = st.columns(2)
            fit = fit_col.multiselect("Fit on", list(saved), format_func=label.get, key="plan_cal_fit")
            held = held_col.multiselect(
                "Hold out (only checked)", list(saved), format_func=label.get, key="plan_cal_held"
            )
            scatter = st.checkbox(
                "Scatter each replayed pass as the runs measured",
                value=DEFAULT_PASS_SPREAD == "measured",
                key="plan_cal_scatter",
                help="calibrate --pass-spread measured: each pass of the replayed closed loop takes its time times "
                "a factor with the sd of ln the fit runs' inter-token gaps show (lowest concurrency), over 8 "
                "seeded replays (the default). It predicts the mix of TTFT modes a run can settle in; off, passes "
                "take exactly their price.",
            )
            logs = calibration_step_logs(history, fit)
            priced = logs and st.checkbox(
                f"Price the passes from the servers' step logs ({len(logs)} of {len(fit)} fit runs kept one)",
                value=True,
                key="plan_cal_step_logs",
                help="calibrate --step-log: each kind of forward pass priced from what the server logged it cost "
                "(with a prompt pass's own fixed cost), and only the server's intake time from the runs' figures.",
            )
            if st.button("Calibrate", key="plan_calibrate", disabled=not fit):
                try:
                    with st.spinner("Measuring this CPU and fitting..."):
                        doc = calibrate(
                            calibration_runs(history, fit),
                            calibration_runs(history, held),
                            pass_spread="measured" if scatter else 0.0,
                            step_logs=logs if priced else (),
                        )
                    path = private_dir("calibrations") / f"{doc.created_at:%Y%m%d-%H%M%S}.json"
                    st.session_state["plan_calibration"] = str(save_calibration(doc, path))
                    st.session_state["plan_calibration_table"] = "\n".join(format_fit(doc))
                    st.session_state["plan_calibration_doc"] = doc
                except (PlannerError, DocumentError) as exc:
                    st.error(str(exc))
            if table := st.session_state.get("plan_calibration_table"):
                st.code(table, language=None)
            if (doc := st.session_state.get("plan_calibration_doc")) is not None:
                st.altair_chart(calibration_chart(doc))
        path = st.text_input(
            "Calibration file (applies to its engine's options)",
            key="plan_calibration",
            help=FIELDS["calibration"].description,
        )
    return path.strip() or None


def custom_gpu_text() -> str:
    """A GPU the catalog lacks, from its datasheet: the three figures planning needs, and FP8/INT8 rates
    where it has them, as the `--gpu custom:...` text the CLI takes (so both parse it one way)."""
    st.caption("Custom GPU: dense figures per GPU (datasheets often print tensor rates with sparsity, 2x dense).")
    mem, bw, bf16, fp8, int8 = st.columns(5)
    return format_custom_gpu(
        mem.number_input("Memory (GiB)", 1.0, 4096.0, 24.0, key="plan_custom_mem"),
        bw.number_input("Bandwidth (GB/s)", 10.0, 100_000.0, 936.0, key="plan_custom_bw"),
        bf16.number_input("BF16 TFLOPS", 0.1, 100_000.0, 71.0, key="plan_custom_bf16"),
        fp8.number_input("FP8 TFLOPS (0: none)", 0.0, 100_000.0, 0.0, key="plan_custom_fp8"),
        int8.number_input("INT8 TOPS (0: none)", 0.0, 100_000.0, 0.0, key="plan_custom_int8"),
    )


def plan_or_stop(values: dict) -> Plan:
    """The plan for the form's values (cached per request); a bad value or a planner error is shown, then stops."""
    try:
        options = RecommendOptions(**values)
        return _plan(options.model_dump_json())
    except ValidationError as exc:
        st.error("; ".join(pydantic_message(err) for err in exc.errors()))
    except PlannerError as exc:
        st.error(str(exc))
    st.stop()


def best_option(plan: Plan) -> None:
    """The top option's headline figures and the table of every option; or why nothing fits."""
    if not plan.options:
        st.error(
            f"Nothing fits {plan.model.name} on this hardware: the 'Cannot run here' tab below says why "
            "for each option."
        )
        return
    best = plan.options[0]
    prediction = best.prediction
    st.subheader(f"Best: {best.engine_label}, {best.format_label}" + (f", TP {best.tp}" if best.tp > 1 else ""))
    cols = st.columns(5)
    cols[0].metric("TTFT", f"{prediction.ttft_ms:,.0f} ms")
    cols[1].metric("TPOT", f"{prediction.tpot_ms:,.1f} ms", help=f"at batch {prediction.batch}")
    cols[2].metric(
        "Output tok/s at this load",
        f"{prediction.output_tok_s:,.0f}",
        help=f"at the form's concurrency; {prediction.busy_replicas} busy replica(s), each request's prefill included",
    )
    cols[3].metric(
        "Saturated output tok/s",
        f"{prediction.max_output_tok_s:,.0f}",
        help=f"capacity: every replica at batch {prediction.max_batch}, each request's prefill included",
    )
    cols[4].metric("Meets SLO", "yes" if best.meets_slo else "no", help="; ".join(best.slo_misses) or None)
    st.dataframe(options_frame(plan), hide_index=True)


def _measure(option: PlanOption, formats: dict[str, str | None], page: str) -> None:
    """Make this option the sidebar's target, then open `page`: the bundled engine in the option's format, or
    the URL the option's launch command serves on (with its server preset, where Preflight has one)."""
    quant = formats.get(option.format)
    if option.engine == "bundled" and quant:
        st.session_state.update(target_kind=KINDS[0], target_quant=quant)
    else:
        preset = PRESET_FOR_ENGINE.get(option.engine)
        st.session_state.update(
            target_kind=KINDS[1],
            target_url=serve_url(option.engine),
            target_preset=PRESETS[preset].name if preset else CUSTOM,
        )
    st.switch_page(page)


def how_predicted(option: PlanOption) -> None:
    """Whose figures these are (a calibration file, or the catalog's assumptions), then each shown figure
    with the assumptions behind it, so a number on this page can be traced to the setting that made it."""
    (st.success if option.calibrated else st.info)(calibration_line(option))
    if line := version_line(option):
        st.caption(line)
    with st.expander("How each figure is predicted"):
        st.dataframe(assumptions_frame(option), hide_index=True)


def option_details(plan: Plan, formats: dict[str, str | None]) -> None:
    """One chosen option (the top one until another is picked): why it ranks where it does, its SLO misses,
    how each figure is predicted, the command that launches it, and the way on: benchmark it or check it
    (`formats`: format id -> the bundled engine's --quant, or None)."""
    # The options are picked by position: a plain int survives reruns and test drivers, a dataclass does not.
    index = st.selectbox(
        "Option", range(len(plan.options)), key="plan_option", format_func=lambda i: option_label(plan.options[i])
    )
    chosen = plan.options[index or 0]
    st.markdown("\n".join(f"- {why}" for why in chosen.why + [f"SLO miss: {miss}" for miss in chosen.slo_misses]))
    how_predicted(chosen)
    st.code(chosen.launch, language="bash")
    if chosen.engine != "bundled":
        st.caption(f"Start it with the command above; Preflight will then measure {serve_url(chosen.engine)}.")
    left, right = st.columns(2)
    if left.button("Benchmark this", key="plan_benchmark", icon=":material/speed:"):
        _measure(chosen, formats, "app_pages/benchmark.py")
    if right.button("Check this", key="plan_check", icon=":material/checklist:"):
        _measure(chosen, formats, "app_pages/checklist.py")


CALIBRATION_UNITS = {"ttft_ms": "TTFT (ms)", "tpot_ms": "TPOT (ms)", "output_tok_s": "output tok/s"}


def calibration_chart(doc: CalibrationDoc) -> alt.FacetChart:
    """Predicted against measured for every run, before and after the fit, one panel per metric: on the
    diagonal the prediction is right, and a horizontal bar is the run's own 95% interval of its median:
    a point whose bar crosses the diagonal is as close as that run can tell. Held-out runs have their own
    shape, so a fit that only explains its own runs shows."""
    frame = calibration_frame(doc)
    frame["metric"] = frame["metric"].map(CALIBRATION_UNITS)
    base = alt.Chart()  # a faceted layer takes its data at the top, none in the layers
    diagonal = base.mark_line(strokeDash=[4, 4]).encode(x="measured:Q", y="measured:Q")
    # the run's own 95% interval of the measured median, drawn across at the prediction's height
    interval = base.mark_rule().encode(x="measured_low:Q", x2="measured_high:Q", y="predicted:Q", color="stage:N")
    points = base.mark_point(size=70, filled=True).encode(
        x=alt.X("measured:Q", title="measured (the panel's unit)"),
        y=alt.Y("predicted:Q", title="predicted (the panel's unit)"),
        color=alt.Color("stage:N", title="prediction", sort=["before", "after"]),
        shape=alt.Shape("runs:N", title="runs"),
        tooltip=["run", "runs", "stage", "metric", alt.Tooltip("measured:Q", format=".1f"), "predicted:Q"],
    )
    return (
        alt.layer(diagonal, interval, points, data=frame)
        .properties(width=200, height=200)
        .facet(column=alt.Column("metric:N", title=None))
        .resolve_scale(x="independent", y="independent")
    )


def memory_chart(plan: Plan) -> alt.Chart:
    """Per-device memory of the top options as stacked bars (weights, activations, overhead, KV cache, unused)."""
    return (
        alt.Chart(memory_frame(plan))
        .mark_bar()
        .encode(
            x=alt.X("GiB:Q", stack="zero", title="GiB per device"),
            y=alt.Y("option:N", sort=None, title=None),
            color="part:N",
            tooltip=["option", "part", alt.Tooltip("GiB:Q", format=".2f")],
        )
    )


def roofline_chart(plan: Plan) -> alt.LayerChart:
    """The device's roofs on log-log axes, with each top option's decode step placed on them."""
    roof, points = roofline_frames(plan)
    log = alt.Scale(type="log")
    return alt.Chart(roof).mark_line().encode(
        x=alt.X("FLOP/byte:Q", scale=log), y=alt.Y("TFLOP/s per device:Q", scale=log), color="roof:N"
    ) + alt.Chart(points).mark_point(filled=True, size=80).encode(
        x="FLOP/byte:Q", y="TFLOP/s per device:Q", shape="bound:N", tooltip=list(points.columns)
    )


def plan_tabs(plan: Plan, catalog: Catalog) -> None:
    """Why and how to launch, memory, roofline, capacity, and what cannot run here; then the plan's notes."""
    formats = {fid: spec.engine_quant for fid, spec in catalog.formats.items()}
    why, memory, roofline, capacity, unfit = st.tabs(
        ["Why and how to launch", "Memory", "Roofline", "Capacity", "Cannot run here"]
    )
    with why:
        if plan.options:
            option_details(plan, formats)
    with memory:
        if plan.options:
            st.altair_chart(memory_chart(plan))
    with roofline:
        if plan.options:
            st.altair_chart(roofline_chart(plan))
            st.caption("Decode steps at the planned batch: left of the knee they are memory-bound.")
    with capacity:
        frame = capacity_frame(plan)
        if frame.empty:
            st.info('Capacity answers "how many devices for this load": set a Target req/s above to see it.')
        else:
            st.dataframe(frame, hide_index=True)
    with unfit:
        st.dataframe(unfit_frame(plan), hide_index=True)
    for note in plan.notes:
        st.caption(note)
