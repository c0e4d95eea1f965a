"""Home: what Preflight is and what this machine offers for inference."""

import streamlit as st

from planner.hardware import Hardware, describe_accelerator, detect, gib


@st.cache_data(ttl=60, show_spinner="Detecting hardware...")
def _hardware() -> Hardware:
    return detect()


st.title("Preflight")
st.markdown(
    "Tells you, before launch, whether an LLM deployment is ready: what this hardware can serve, "
    "how the endpoint performs and whether it is safe."
)

hw = _hardware()
st.subheader("This machine")
st.markdown(f"**CPU:** {hw.cpu_model}")
cols = st.columns(4)
cols[0].metric("Cores (physical / logical)", f"{hw.physical_cores or '?'} / {hw.logical_cores or '?'}")
cols[1].metric("RAM total", gib(hw.ram_total_bytes))
cols[2].metric("RAM available", gib(hw.ram_available_bytes))
cols[3].metric("Disk free (weights cache)", gib(hw.disk_free_bytes), help=hw.disk_path)
st.markdown(
    f"**ISA features for inference:** {', '.join(hw.isa) or 'none detected'}  \n"
    f"**Accelerator:** {describe_accelerator(hw)}  \n"
    f"**OS:** {hw.os}  \n"
    f"**torch:** {hw.torch_version or 'not installed'}"
)
for note in hw.notes:
    st.warning(note)

st.divider()
st.page_link("pages/engine_page.py", label="Try the bundled engine", icon=":material/memory:")
