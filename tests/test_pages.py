"""The dashboard's pages run in Streamlit's AppTest against the real engine (no mocks)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from planner.hardware import detect

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT_S = 120


@pytest.fixture
def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.run()
    assert not at.exception
    return at


def test_home_shows_this_machine(app: AppTest) -> None:
    hw = detect()
    markdown = "\n".join(m.value for m in app.markdown)
    assert f"**CPU:** {hw.cpu_model}" in markdown
    assert "ISA features for inference" in markdown
    labels = [m.label for m in app.metric]
    assert labels == ["Cores (physical / logical)", "RAM total", "RAM available", "Disk free (weights cache)"]
    assert app.metric[0].value == f"{hw.physical_cores} / {hw.logical_cores}"
    assert app.metric[1].value.endswith("GiB")


def test_engine_page_asks_to_load_first(app: AppTest) -> None:
    app.switch_page("pages/engine_chat.py").run()
    assert not app.exception
    assert app.title[0].value == "Engine"
    assert app.selectbox(key="engine_quant").value == "int4"
    assert "press Load" in app.info[0].value
    assert len(app.chat_input) == 0


@pytest.mark.slow
def test_engine_page_loads_int4_and_chats(app: AppTest) -> None:
    app.switch_page("pages/engine_chat.py").run()
    app.selectbox(key="engine_quant").set_value("int4")
    app.button(key="engine_load").click().run()
    assert not app.exception
    assert not app.error, [e.value for e in app.error]
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Loaded format"].startswith("int4 on ")
    assert metrics["Source"] in ("cold: GGUF", "warm: cache")
    assert float(metrics["Weight memory"].removesuffix(" MiB")) > 0

    app.number_input(key="engine_max_tokens").set_value(16)
    app.slider(key="engine_temperature").set_value(0.0)
    app.chat_input(key="engine_chat_input").set_value("What is the capital of France?").run()
    assert not app.exception
    assert not app.error, [e.value for e in app.error]
    roles = [m.name for m in app.chat_message]
    assert roles == ["user", "assistant"]
    assistant = app.chat_message[1]
    assert assistant.markdown[0].value.strip()
    caption = assistant.caption[0].value
    assert "decode" in caption and "completion tokens" in caption and "finish: " in caption
    history = app.session_state["engine_messages"]
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[1]["content"] == assistant.markdown[0].value
