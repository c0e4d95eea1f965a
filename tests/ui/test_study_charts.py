"""The Engine studies charts (widgets/studies.py): every size a study ran is a labelled point, even one."""

from __future__ import annotations

from pathlib import Path

from reports.documents import load
from reports.study_report import PARETO_CHARTS, STUDY_CHARTS, StudyReport
from widgets.studies import _chart, pareto_chart

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


def test_the_compression_study_draws_its_pareto_frontier() -> None:
    """Quality against size: every setting a labelled point, the frontier (computed by the study) marked and joined."""
    doc = load(FIXTURE)
    assert isinstance(doc, StudyReport)
    rows = [
        {"setting": "fp32", "weight_bytes": 2**29, "decode_tok_s": 20.0, "mean_kl_nats": 0.0, "pareto_size": True},
        {"setting": "int4", "weight_bytes": 2**26, "decode_tok_s": 30.0, "mean_kl_nats": 0.01, "pareto_size": True},
        {"setting": "prune", "weight_bytes": 2**29, "decode_tok_s": 19.0, "mean_kl_nats": 3.0, "pareto_size": False},
        {"setting": "slow", "weight_bytes": 2**26, "decode_tok_s": None, "mean_kl_nats": 0.5, "pareto_size": False},
    ]
    compress = doc.model_copy(update={"study": "compress", "rows": rows})
    by_size, by_speed = PARETO_CHARTS["compress"]
    drawn = pareto_chart(compress, by_size).to_dict()
    [data] = drawn["datasets"].values()
    assert [(d["setting"], d["x"], d["frontier"]) for d in data] == [
        ("fp32", 512.0, "on the frontier"),
        ("int4", 64.0, "on the frontier"),
        ("prune", 512.0, "dominated"),
        ("slow", 64.0, "dominated"),
    ]
    line, points, labels = drawn["layer"]
    assert line["mark"]["type"] == "line" and "frontier" in line["transform"][0]["filter"]
    assert points["encoding"]["y"]["scale"]["type"] == "symlog" and labels["encoding"]["text"]["field"] == "setting"
    speed_points = pareto_chart(compress, by_speed).to_dict()["datasets"].popitem()[1]
    assert [d["setting"] for d in speed_points] == ["fp32", "int4", "prune"]
