"""Hardware: what `planner.hardware.detect()` found, the GPU/NVML story, and this CPU measured."""

import json

import streamlit as st

from checks.load.calibration import SERVED_NOTE, measured_run, sync_runs
from planner.entrypoints import compare_measured, compare_run
from planner.errors import PlannerError
from planner.hardware import describe_nvml, gpu_story
from planner.tables import comparison_frame, gpu_frame
from reports.history import History
from reports.home import history_dir
from reports.store import DocumentError
from widgets.common import cached_hardware, machine_metrics

st.title("Hardware")
hw = cached_hardware()
st.caption("The same record as `python -m planner detect --json`. A probe that failed shows as not measured.")

machine_metrics(hw)
st.markdown(
    f"**CPU:** {hw.cpu_model}  \n"
    f"**ISA features for inference:** {', '.join(hw.isa) or 'none detected'}  \n"
    f"**OS:** {hw.os}  \n"
    f"**torch:** {hw.torch_version or 'not installed'} (CUDA {'yes' if hw.cuda_available else 'no'}, "
    f"MPS {'yes' if hw.mps_available else 'no'})"
)

st.subheader("GPUs")
if hw.gpus:
    st.success(describe_nvml(hw))
    st.dataframe(gpu_frame(hw), hide_index=True)
else:
    st.info(
        f"{gpu_story(hw)}  \n"
        "NVIDIA GPUs are read through NVML (`nvidia-ml-py`), which needs the NVIDIA driver's library; "
        "AMD GPUs are not visible to NVML. The planner still works: pick a GPU from the catalog on the "
        "Plan page, or plan for this CPU, whose bandwidth and FLOP/s it measures."
    )
    st.caption(f"Details: {describe_nvml(hw)}")
for note in hw.notes:
    st.warning(note)

st.subheader("This CPU, measured")
st.caption("STREAM-like copy/triad, a timed matmul, per-op dispatch and weight-only kernel rates, with torch.")
if st.button("Measure this CPU", key="hardware_measure"):
    from planner.cpu_probe import measure

    with st.spinner("Measuring bandwidth, FLOP/s and dispatch (a few seconds)..."):
        st.session_state["hardware_cpu"] = measure()
cpu = st.session_state.get("hardware_cpu")
if cpu is None:
    st.info("Press **Measure this CPU** to time it (the Plan page does this when you plan for this CPU).")
else:
    cols = st.columns(4)
    cols[0].metric("Bandwidth (largest working set)", f"{cpu.bandwidth_bytes_s / 1e9:.1f} GB/s")
    cols[1].metric("fp32 matmul", f"{cpu.fp32_flops / 1e9:.0f} GFLOP/s")
    cols[2].metric("bf16 matmul", f"{cpu.bf16_flops / 1e9:.0f} GFLOP/s")
    cols[3].metric("Dispatch per op", f"{cpu.op_overhead_s * 1e6:.1f} us")
    if note := cpu.bandwidth_note():
        st.caption(note)
    st.caption(cpu.describe())

st.subheader("Predicted vs measured")
st.caption(
    "Pick a saved sync benchmark of the bundled engine, or upload what `python -m engine generate --json "
    "--device cpu ...` printed; the planner predicts the same run from this CPU's measurements and shows its "
    "error per metric."
)
saved = sync_runs(History(history_dir()))
choice = st.selectbox(
    "A saved benchmark of the bundled engine (sync profile: one request at a time)",
    [None, *saved],
    format_func=lambda e: "none chosen" if e is None else f"{e.id} · {e.target} · {e.headline}",
    key="hardware_saved_run",
)
run = st.file_uploader("...or a `python -m engine generate --json` result", type="json", key="hardware_run")
try:
    comparison, note = None, None
    if choice is not None:
        measured = measured_run(History(history_dir()).load(choice.id))
        if measured is not None:
            with st.spinner("Measuring this CPU and predicting the run..."):
                comparison, note = compare_measured(measured), SERVED_NOTE
    elif run is not None:
        with st.spinner("Measuring this CPU and predicting the run..."):
            comparison = compare_run(json.loads(run.getvalue()))
except (PlannerError, DocumentError, json.JSONDecodeError) as exc:
    st.error(str(exc))
else:
    if comparison is not None:
        st.dataframe(comparison_frame(comparison), hide_index=True)
        st.caption(comparison.conditions + (f"; {note}" if note else ""))
    elif not saved:
        st.caption(
            "No sync benchmark of the bundled engine is saved yet: run one on the Benchmark page "
            "(load profile sync) and it appears here."
        )
