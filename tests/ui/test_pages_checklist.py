"""The Checklist page in Streamlit's AppTest: its form, its validation, and one real run on a planted server."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from reports.history import History
from tests.planted_server import PlantedServer

PAGE = "app_pages/checklist.py"
FAST = {"token_delay_s": 0.002, "max_running": 8, "max_queue": 16, "rate_limit_rpm": 6000, "rate_limit_burst": 200}


def test_renders_the_form(page: AppTest) -> None:
    assert page.title[0].value == "Readiness checklist"
    assert page.radio(key="target_kind").value == "Bundled engine"
    assert page.selectbox(key="check_slo").value == "chat"
    assert page.radio(key="check_exposure").value == "local"
    assert "press Run checklist" in page.info[0].value
    assert not page.button(key="check_run").disabled


def test_bad_url_disables_run(page: AppTest) -> None:
    page.radio(key="target_kind").set_value("Remote endpoint").run()
    page.text_input(key="target_url").input("ftp://nowhere").run()
    assert not page.exception
    assert page.button(key="check_run").disabled
    assert page.error


def test_a_real_run_shows_verdict_results_and_downloads(page: AppTest, preflight_env: Path) -> None:
    with PlantedServer(**FAST) as server:
        page.radio(key="target_kind").set_value("Remote endpoint").run()
        page.text_input(key="target_url").input(server.base_url).run()
        page.text_input(key="target_api_key").input(server.api_key).run()
        page.multiselect(key="check_categories").set_value(["security", "monitoring"]).run()
        page.button(key="check_run").click().run()
        job = page.session_state["check_job"]
        assert job.wait(300), "the checklist job did not end"
        page.run()
    assert not page.exception
    report = job.snapshot().result
    assert report.categories == ["security", "monitoring"]
    banner = [e.value for e in (*page.success, *page.warning, *page.error)]
    assert any(report.verdict.value.replace("_", " ") in text for text in banner), banner
    assert [s.value.split(" :")[0] for s in page.main.subheader] == ["Security", "Monitoring"]
    doc_id, files = page.session_state["check_exports"]
    assert doc_id == report.id and set(files) == {"JSON", "HTML", "Markdown", "JUnit XML"}
    json_text, markdown = files["JSON"][0], files["Markdown"][0]
    assert report.verdict.value in markdown and '"kind": "preflight.readiness-report"' in json_text
    assert [e.id for e in History(preflight_env / "history").entries()] == [report.id]  # kept in the history
    page.run()  # a rerun reuses the serialised downloads
    assert page.session_state["check_exports"][1]["JSON"][0] is json_text
