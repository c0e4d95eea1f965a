"""The Engine studies charts (widgets/studies.py): every size a study ran is a labelled point, even one."""

from __future__ import annotations

from pathlib import Path

from reports.documents import load
from reports.study_report import STUDY_CHARTS, StudyReport
from widgets.studies import _chart

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "engine-study.v1.json"


def test_a_one_point_study_draws_its_point_on_an_ordinal_axis() -> None:
    doc = load(FIXTURE)
    assert isinstance(doc, StudyReport)
    one = doc.model_copy(update={"rows": doc.rows[:1]})
    spec = STUDY_CHARTS["kv"][0]
    encoding = _chart(one, spec).to_dict()["encoding"]
    assert encoding["x"]["type"] == "ordinal" and encoding["x"]["field"] == "seq_len"
    assert encoding["y"]["type"] == "quantitative"
    assert len(_chart(doc, spec).to_dict()["datasets"].popitem()[1]) == 2 * len(doc.rows)  # two series
