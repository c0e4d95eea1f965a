"""Preflight dashboard entry point: `streamlit run app.py` (or `make run`)."""

import streamlit as st

from widgets.icon import page_icon
from widgets.target import keep_target

st.set_page_config(page_title="Preflight", page_icon=page_icon(), layout="wide")  # drawn locally: no CDN

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", url_path="home", default=True),
    st.Page("pages/hardware.py", title="Hardware", icon=":material/developer_board:", url_path="hardware"),
    st.Page("pages/plan.py", title="Plan", icon=":material/route:", url_path="plan"),
    st.Page("pages/engine_chat.py", title="Engine", icon=":material/memory:", url_path="engine"),
    st.Page("pages/studies.py", title="Engine studies", icon=":material/query_stats:", url_path="studies"),
    st.Page("pages/benchmark.py", title="Benchmark", icon=":material/speed:", url_path="benchmark"),
    st.Page("pages/checklist.py", title="Checklist", icon=":material/checklist:", url_path="checklist"),
    st.Page("pages/reports.py", title="Reports", icon=":material/history:", url_path="reports"),
]

keep_target()  # the sidebar's target survives pages that do not draw its picker (widgets/target.py)
st.navigation(PAGES).run()
