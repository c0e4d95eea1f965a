"""The Reports page in Streamlit's AppTest, over a real history folder (PREFLIGHT_HOME in a temporary folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from reports import store
from reports.benchmark_result import load_benchmark_result
from reports.history import History
from reports.readiness_report import ReadinessReport
from tests.ui.app_session import open_app

PAGE = "app_pages/reports.py"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _open(monkeypatch: pytest.MonkeyPatch, home: Path) -> AppTest:
    monkeypatch.setenv("PREFLIGHT_HOME", str(home))
    return open_app(PAGE, timeout_s=60)


def test_an_empty_history_says_how_to_fill_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    at = _open(monkeypatch, tmp_path)
    assert at.title[0].value == "Reports"
    assert "No saved runs yet" in at.info[0].value


def test_history_open_compare_and_unreadable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    history = History(tmp_path / "history")
    report = store.load(FIXTURES / "readiness-report.v1.json", ReadinessReport)
    bench = load_benchmark_result(FIXTURES / "benchmark-result.v1.json")
    history.save(report)
    history.save(bench.model_copy(update={"id": "20991231-000000-aaaaaa", "label": "later run"}))
    (tmp_path / "history" / "broken.json").write_text("{")
    at = _open(monkeypatch, tmp_path)
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["id"]) == ["20991231-000000-aaaaaa", report.id]
    assert any("could not be read" in e.label for e in at.expander)
    at.selectbox(key="reports_open").set_value(report.id).run()
    assert not at.exception
    banner = [e.value for e in at.error]
    assert any("NOT READY" in text or "NOT_READY" in text for text in banner), banner
    downloads = at.session_state["reports_open_exports"][1]
    assert set(downloads) == {"JSON", "HTML", "Markdown", "JUnit XML"}
    # Compare: A is the older report, B the newer benchmark; same records, so nothing changed.
    assert at.selectbox(key="reports_a").value == report.id
    compare_table = next(d.value for d in at.dataframe if "meaning" in d.value.columns)
    # (the fixture's run is 64 requests: too few for a p99, which the table says rather than guessing)
    assert set(compare_table["meaning"]) == {"no significant change", "too few requests to judge this percentile"}


def test_filters_narrow_the_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    history = History(tmp_path / "history")
    history.save(store.load(FIXTURES / "readiness-report.v1.json", ReadinessReport))
    history.save(load_benchmark_result(FIXTURES / "benchmark-result.v1.json"))
    at = _open(monkeypatch, tmp_path)
    at.selectbox(key="reports_kind").set_value("benchmark").run()
    assert list(at.dataframe[0].value["kind"]) == ["benchmark"]
    at.text_input(key="reports_target").input("nowhere.example").run()
    assert at.info[0].value == "No saved run matches these filters."
