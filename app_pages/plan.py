"""Plan: pick a model, hardware and workload; see ranked serving options, why, and how to launch them."""

import streamlit as st

from planner.catalog import load_catalog
from widgets.plan import best_option, plan_inputs, plan_or_stop, plan_tabs

st.title("Plan")
st.caption("Every number is computed from the model's shape and the hardware's figures; each option shows its working.")
catalog = load_catalog()
plan = plan_or_stop(plan_inputs(catalog))
best_option(plan)
plan_tabs(plan, catalog)
