"""The sidebar target picker (widgets/target.py) in AppTest: one target for every measuring page, presets,
"Test connection" against a real planted server, and a key that is never shown back."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from checks.load.targets import free_port
from checks.presets import PRESETS
from tests.planted_server import MODEL, PlantedServer
from tests.ui.app_session import open_app


def _app(page: str = "app_pages/benchmark.py") -> AppTest:
    return open_app(page, eager=False)  # these tests start no bundled engine: the sidebar as a user first sees it


def _target_line(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("**Target:**"))


def test_one_target_for_benchmark_and_checklist_kept_across_kind_switches() -> None:
    at = _app()
    assert _target_line(at) == "**Target:** `bundled:int4, 1 server thread` (change it in the sidebar)"
    assert not at.checkbox(key="target_eager").value  # compiled decode is the default
    at.checkbox(key="target_eager").check().run()
    assert _target_line(at) == "**Target:** `bundled:int4, 1 server thread, eager decode` (change it in the sidebar)"
    at.radio(key="target_kind").set_value("Remote endpoint").run()
    at.text_input(key="target_url").input("http://127.0.0.1:8000/v1").run()
    at.text_input(key="target_api_key").input("sk-in-memory-only").run()
    at.switch_page("app_pages/checklist.py").run()
    assert not at.exception
    assert _target_line(at) == "**Target:** `http://127.0.0.1:8000/v1` (change it in the sidebar)"
    at.radio(key="target_kind").set_value("Bundled engine").run()
    at.radio(key="target_kind").set_value("Remote endpoint").run()
    assert at.text_input(key="target_url").value == "http://127.0.0.1:8000/v1"  # not lost by the switch
    assert at.text_input(key="target_api_key").value == "sk-in-memory-only"
    assert all("sk-in-memory-only" not in m.value for m in at.markdown)  # used, never shown


def test_a_preset_fills_its_default_url_and_says_what_metrics_need() -> None:
    at = _app()
    at.radio(key="target_kind").set_value("Remote endpoint").run()
    at.selectbox(key="target_preset").set_value(PRESETS["sglang"].name).run()
    assert at.text_input(key="target_url").value == "http://127.0.0.1:30000/v1"
    assert any("--enable-metrics" in c.value for c in at.sidebar.caption)


def test_test_connection_says_ready_or_why_not() -> None:
    at = _app()
    at.radio(key="target_kind").set_value("Remote endpoint").run()
    with PlantedServer() as planted:
        at.text_input(key="target_url").input(planted.base_url).run()
        at.text_input(key="target_api_key").input(planted.api_key).run()
        at.button(key="target_test").click().run()
    assert not at.exception
    assert at.sidebar.success[0].value.startswith(f"Ready to measure: {MODEL}, first token ")
    assert any("API key: required and accepted" in m.value for m in at.sidebar.markdown)
    at.text_input(key="target_url").input(f"http://127.0.0.1:{free_port()}/v1").run()
    assert not at.sidebar.success  # the report was for another URL: not shown as if it were this one's
    at.button(key="target_test").click().run()
    assert at.sidebar.error[0].value.startswith("Not ready: cannot reach http://127.0.0.1:")
