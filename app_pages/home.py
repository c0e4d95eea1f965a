"""Home: the start of the pre-launch flow, what this machine offers, and a one-click Quick check."""

import streamlit as st

from planner.hardware import describe_accelerator
from widgets.common import cached_hardware, machine_metrics
from widgets.home import flow, quick_check
from widgets.target import current_target, target_sidebar

target_sidebar()
st.title("Preflight")
st.markdown(
    "Tells you, before launch, whether an LLM deployment is ready: what this hardware can serve, "
    "how the endpoint performs and whether it is safe. Every figure is measured."
)
hw = cached_hardware()

target = current_target()
st.subheader("Quick check")
quick_check(eager=bool(target.get("eager")))

st.subheader("The pre-launch flow")
flow(target, hw)

st.subheader("This machine")
st.markdown(f"**CPU:** {hw.cpu_model}")
machine_metrics(hw)
st.markdown(
    f"**ISA features for inference:** {', '.join(hw.isa) or 'none detected'}  \n"
    f"**Accelerator:** {describe_accelerator(hw)}  \n"
    f"**OS:** {hw.os}  \n"
    f"**torch:** {hw.torch_version or 'not installed'}"
)
for note in hw.notes:
    st.warning(note)

st.divider()
st.page_link("app_pages/engine_chat.py", label="Try the bundled engine", icon=":material/memory:")
