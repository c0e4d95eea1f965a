"""The dashboard's pages run in Streamlit's AppTest against the real engine (no mocks)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from checks.readiness.config import quick_check_command
from planner.hardware import detect
from reports import store
from reports.history import History
from reports.home import history_dir
from reports.readiness_report import ReadinessReport

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


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
    app.switch_page("app_pages/engine_chat.py").run()
    assert not app.exception
    assert app.title[0].value == "Engine"
    assert app.selectbox(key="engine_quant").value == "int4"
    assert "press Load" in app.info[0].value
    assert len(app.chat_input) == 0


@pytest.mark.slow
def test_engine_page_loads_int4_and_chats(app: AppTest) -> None:
    app.switch_page("app_pages/engine_chat.py").run()
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
    assert caption.startswith("int4 · ")  # each answer names the format that produced it
    assert not app.chat_input(key="engine_chat_input").disabled  # enabled again once the reply is in

    # A run cut short while a reply streamed (a message sent meanwhile, another widget) leaves the turn
    # pending: the next run answers it, so no reply is silently dropped and no two user turns follow.
    history.append({"role": "user", "content": "And of Italy?"})
    app.session_state["engine_pending"] = True
    app.run()
    assert [m["role"] for m in app.session_state["engine_messages"]] == ["user", "assistant"] * 2
    assert not app.session_state["engine_pending"]


def test_home_lists_the_flow_and_offers_the_quick_check(app: AppTest) -> None:
    markdown = "\n".join(m.value for m in app.markdown)
    assert "**4. Benchmark**: not run on this target yet" in markdown
    assert "**5. Checklist**: no verdict for this target yet" in markdown
    assert "`bundled:int4`, started by Preflight" in markdown
    assert not app.button(key="home_quick_check").disabled
    assert any(quick_check_command(eager=True) in c.value for c in app.caption)  # open_app ticks Eager decode


def test_home_shows_the_last_verdict_of_the_sidebars_target(app: AppTest) -> None:
    report = store.load(FIXTURES / "readiness-report.v1.json", ReadinessReport)
    History(history_dir()).save(report)
    app.radio(key="target_kind").set_value("Remote endpoint").run()
    app.text_input(key="target_url").input(report.target.base_url).run()
    markdown = "\n".join(m.value for m in app.markdown)
    assert f"**5. Checklist**: **{report.verdict.value}**" in markdown
    assert f"saved as `{report.id}`" in markdown
    assert History(history_dir()).latest(report.target.base_url, "readiness").id == report.id
    assert History(history_dir()).latest(report.target.base_url, "benchmark") is None


@pytest.mark.slow
def test_the_quick_check_ends_in_a_verdict_and_a_saved_report(app: AppTest) -> None:
    app.button(key="home_quick_check").click().run()
    job = app.session_state["check_job"]
    assert job.wait(600), "the Quick check did not end"
    app.run()
    assert not app.exception
    report = job.snapshot().result
    assert report is not None and report.target.quant == "int4"
    assert len(report.categories) == 5  # every category
    banner = [e.value for e in (*app.success, *app.warning, *app.error)]
    assert any(report.verdict.value.replace("_", " ") in text for text in banner), banner
    assert History(history_dir()).latest("bundled:int4", "readiness").id == report.id
