"""Preflight dashboard entry point: `streamlit run app.py` (or `make run`).

The pages live in `app_pages/`, not `pages/`: Streamlit treats a `pages/` folder beside the entry
script as its older file-name navigation, which a deep link (`/benchmark`) on a fresh server got
until someone opened `/` (tests/ui/test_browser.py checks the deep link)."""

import streamlit as st

from widgets.icon import page_icon
from widgets.target import keep_target

st.set_page_config(page_title="Preflight", page_icon=page_icon(), layout="wide")  # drawn locally: no CDN

PAGES = [
    st.Page("app_pages/home.py", title="Home", icon=":material/home:", url_path="home", default=True),
    st.Page("app_pages/hardware.py", title="Hardware", icon=":material/developer_board:", url_path="hardware"),
    st.Page("app_pages/plan.py", title="Plan", icon=":material/route:", url_path="plan"),
    st.Page("app_pages/engine_chat.py", title="Engine", icon=":material/memory:", url_path="engine"),
    st.Page("app_pages/studies.py", title="Engine studies", icon=":material/query_stats:", url_path="studies"),
    st.Page("app_pages/benchmark.py", title="Benchmark", icon=":material/speed:", url_path="benchmark"),
    st.Page("app_pages/checklist.py", title="Checklist", icon=":material/checklist:", url_path="checklist"),
    st.Page("app_pages/reports.py", title="Reports", icon=":material/history:", url_path="reports"),
]

keep_target()  # the sidebar's target survives pages that do not draw its picker (widgets/target.py)
st.navigation(PAGES).run()
