"""The Checklist page in Streamlit's AppTest: its form, its validation, and one real run on a planted server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from reports.history import History
from tests.planted_server import PlantedServer
from tests.result_docs import record, result_of, run_of
from widgets.checklist_files import RESULT_FILE, SAVED_RUN, SLO_FILE

PAGE = "app_pages/checklist.py"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
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


PROFILE = b"name: strict\nsource: our launch review, 2025\nttft_p95_ms: 500\n"
PLAN = json.dumps({"model": "llama-3.1-8b", "options": []}).encode()
UNREACHABLE = "http://127.0.0.1:9"  # nothing listens on the discard port: the run ends at once, its checks ERROR


def _remote(page: AppTest, url: str = UNREACHABLE) -> None:
    page.radio(key="target_kind").set_value("Remote endpoint").run()
    page.text_input(key="target_url").input(url).run()


def _errors(page: AppTest) -> list[str]:
    return [e.value for e in page.error]


def test_a_saved_run_a_plan_and_a_profile_file_reach_the_run(page: AppTest, preflight_env: Path) -> None:
    """What `python -m checks run --from RESULT --plan PLAN --slo FILE` does, picked on the page."""
    saved = result_of([run_of([record(0, 0.0, [0.1, 0.2, 0.3]), record(1, 0.0, [0.2, 0.3])])])
    path = History(preflight_env / "history").save(saved)
    page.run()
    _remote(page)
    page.radio(key="check_perf_from").set_value(SAVED_RUN).run()
    assert page.selectbox(key="check_saved").value == saved.id
    page.selectbox(key="check_slo").set_value(SLO_FILE).run()
    assert page.button(key="check_run").disabled and not page.error  # no file yet: nothing is wrong so far
    page.file_uploader(key="check_slo_file").set_value(("strict.yaml", PROFILE, "application/yaml")).run()
    page.file_uploader(key="check_plan_file").set_value(("plan.json", PLAN, "application/json")).run()
    page.multiselect(key="check_categories").set_value(["performance"]).run()
    assert not page.exception and not page.error, _errors(page)
    page.button(key="check_run").click().run()
    job = page.session_state["check_job"]
    assert job.wait(120), "the checklist job did not end"
    report = job.snapshot().result
    assert report.benchmark_source == str(path) and report.benchmark.id == saved.id
    assert report.slo.name == "strict" and report.plan == json.loads(PLAN)


def test_with_nothing_saved_the_page_says_where_runs_come_from(page: AppTest) -> None:
    _remote(page)
    page.radio(key="check_perf_from").set_value(SAVED_RUN).run()
    assert not page.exception and not page.error
    assert any("No benchmark is saved yet" in c.value for c in page.caption)
    assert page.button(key="check_run").disabled


@pytest.mark.parametrize(
    ("key", "name", "data", "words"),
    [
        ("check_from_file", "broken.json", b'{"kind": "preflight.benchmark', "'broken.json': not a JSON document"),
        (
            "check_from_file",
            "report.json",
            (FIXTURES / "readiness-report.v1.json").read_bytes(),
            "'report.json' is a 'preflight.readiness-report' document, not a preflight.benchmark-result",
        ),
        (
            "check_from_file",
            "future.json",
            json.dumps({"kind": "preflight.benchmark-result", "schema_version": 99}).encode(),
            "'future.json' has schema_version 99, written by a newer Preflight",
        ),
        ("check_plan_file", "plan.json", b"[1]", "the plan 'plan.json' has no 'options' list"),
        (
            "check_slo_file",
            "strict.yaml",
            PROFILE.replace(b"500", b"-1"),
            "'strict.yaml': ttft_p95_ms: Input should be greater than 0",
        ),
        (
            "check_slo_file",
            "result.json",
            (FIXTURES / "benchmark-result.v1.json").read_bytes(),
            "'result.json' is a 'preflight.benchmark-result' document, not an SLO profile",
        ),
    ],
)
def test_a_bad_file_is_explained_beside_it_and_blocks_run(
    page: AppTest, key: str, name: str, data: bytes, words: str
) -> None:
    _remote(page)
    if key == "check_from_file":
        page.radio(key="check_perf_from").set_value(RESULT_FILE).run()
    if key == "check_slo_file":
        page.selectbox(key="check_slo").set_value(SLO_FILE).run()
    page.file_uploader(key=key).set_value((name, data, "application/octet-stream")).run()
    assert not page.exception, page.exception
    assert any(e.startswith(words) for e in _errors(page)), _errors(page)
    assert not any("uploads" in e for e in _errors(page))  # the private copy's path is never shown
    assert page.button(key="check_run").disabled
