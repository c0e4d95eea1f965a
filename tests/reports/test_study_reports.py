"""Engine studies as history documents: saved, listed, shown, exported; never compared.

The fixture `engine-study.v1.json` is a real `python -m engine study kv` run on the bundled
model (three lengths, 8 tokens), saved by the CLI into a history folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from reports import store
from reports.__main__ import main
from reports.documents import load
from reports.exports import export, formats_for
from reports.history import Filters, History
from reports.study_export import chart_figure, study_markdown, value_text
from reports.study_report import STUDY_CHARTS, StudyReport
from reports.svg_charts import Chart, bar_chart

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "engine-study.v1.json"
HOSTILE = "<script>alert(1)</script>"


@pytest.fixture
def study() -> StudyReport:
    doc = load(FIXTURE)
    assert isinstance(doc, StudyReport)
    return doc


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PREFLIGHT_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "history"


def test_a_study_round_trips_through_the_history(study: StudyReport, home: Path) -> None:
    history = History(home)
    history.save(study)
    [entry] = history.entries()
    assert (entry.id, entry.kind, entry.target, entry.label) == (study.id, "study", "bundled:int4", "kv fixture")
    assert entry.verdict is None and entry.headline == "kv study: 3 measured points"
    assert entry.model == study.conditions["model"]
    assert history.load(study.id[:10]) == study
    assert history.entries(Filters(kind="study")) == [entry] and history.entries(Filters(kind="benchmark")) == []


def test_the_document_is_strict(study: StudyReport) -> None:
    data = json.loads(FIXTURE.read_text())
    with pytest.raises(ValidationError):
        StudyReport.model_validate({**data, "surprise": 1})
    with pytest.raises(ValidationError):
        StudyReport.model_validate({**data, "study": "../../etc"})
    with pytest.raises(store.DocumentError, match="newer"):
        store.from_data({**data, "schema_version": 2}, StudyReport, "f.json")
    engine_dict = {"schema_version": 9, "study": "kv", "conditions": {}, "rows": [], "notes": []}
    with pytest.raises(store.DocumentError, match="layout 9"):
        StudyReport.from_study(
            engine_dict,
            title="t",
            command="c",
            started_at=study.started_at,
            finished_at=study.finished_at,
            tool_version="0",
        )


def test_markdown_holds_the_table_notes_conditions_and_command(study: StudyReport) -> None:
    text = export(study, "md")
    assert text == study_markdown(study)
    assert "| seq_len | prompt_tokens |" in text and "| 64 | 56 | 8 |" in text
    assert "## Reproduce" in text and study.command in text
    assert f"| kv_lengths | {value_text('kv_lengths', [16, 32, 64])} |" in text
    assert "| yes |" in text and "| no |" in text  # same_tokens differed at 64, as the run measured


def test_html_draws_the_study_charts_and_escapes_its_text(study: StudyReport) -> None:
    hostile = study.model_copy(update={"notes": [HOSTILE], "label": HOSTILE})
    page = export(hostile, "html")
    titles = re.findall(r"<svg\b.*?<title>(.*?)</title>", page, flags=re.S)
    assert titles == [spec.title for spec in STUDY_CHARTS["kv"]]
    assert "KV cache on" in page and "KV cache off" in page
    assert HOSTILE not in page and "&lt;script&gt;" in page
    assert "<script" not in page


def test_a_study_has_no_junit_and_no_comparison(
    study: StudyReport, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert [f.name for f in formats_for(study)] == ["json", "html", "md"]
    with pytest.raises(store.DocumentError, match="a study document has no junit export; it has json, html, md"):
        export(study, "junit")
    assert main(["compare", str(FIXTURE), str(FIXTURE)]) == 2
    assert "is an engine study: it has no request records to compare" in capsys.readouterr().err


def test_reports_cli_lists_shows_and_exports_a_study(
    study: StudyReport, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    History(home).save(study)
    assert main(["list", "--kind", "study"]) == 0
    assert study.id in capsys.readouterr().out
    assert main(["show", study.id]) == 0
    assert capsys.readouterr().out.startswith("# Preflight engine study: kv")
    out = tmp_path / "study.html"
    assert main(["export", study.id, "--format", "html", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_quant_studies_draw_bars_per_format() -> None:
    svg = bar_chart(Chart("Decode tok/s", "weight format", "tok/s"), [("fp32", 10.0), ("int4", 25.0), ("fp8", None)])
    assert svg.count("<rect") == 2 and ">fp8<" in svg and "int4: 25" in svg
    with pytest.raises(ValueError):
        bar_chart(Chart("t", "x", "y"), [("fp32", None)])


def test_a_chart_with_nothing_measured_is_a_note(study: StudyReport) -> None:
    empty = study.model_copy(update={"rows": [{"seq_len": 16, "cached_decode_tok_s": None}]})
    figure = chart_figure(empty, STUDY_CHARTS["kv"][0])
    assert figure.svg is None and figure.note == "Nothing was measured."
