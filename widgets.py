"""Streamlit pieces that more than one page shows. Pages never import each other, so they meet here."""

import streamlit as st

from planner.hardware import Hardware, detect, gib


@st.cache_data(ttl=60, show_spinner="Detecting hardware...")
def cached_hardware() -> Hardware:
    """One detection per minute for every page (detection reads /proc, NVML and torch)."""
    return detect()


def machine_metrics(hw: Hardware) -> None:
    """Cores, RAM and disk as one row of metric cards."""
    cols = st.columns(4)
    cols[0].metric("Cores (physical / logical)", f"{hw.physical_cores or '?'} / {hw.logical_cores or '?'}")
    cols[1].metric("RAM total", gib(hw.ram_total_bytes))
    cols[2].metric("RAM available", gib(hw.ram_available_bytes))
    cols[3].metric("Disk free (weights cache)", gib(hw.disk_free_bytes), help=hw.disk_path)
