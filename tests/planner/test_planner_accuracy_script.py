"""bench/planner_accuracy.py predicts every published point through `predict_one` without raising.

The benchmark's numbers are not asserted here (that would be tuning to the data); what is checked is
that each point's conditions reach the planner, each measured figure gets a row, and the mappings the
script states (NIM as TensorRT-LLM, Llama-2 from its config.json figures) are the ones it makes.
"""

from __future__ import annotations

import pytest

from bench.planner_accuracy import MODEL_FILES, SUMMARY, options_for, predict_all, summary_table
from planner.model_files import model_from_file
from planner.published import load_published

# How a measured field is named in the rows: # GPU blocks are compared as KV tokens.
ROW_METRIC = {"gpu_blocks": "kv_tokens", "total_gpu_memory_gib": None}


@pytest.fixture(scope="module")
def predicted() -> tuple[list, dict]:
    return predict_all()


def test_every_point_gets_a_row_per_measured_metric(predicted: tuple[list, dict]) -> None:
    rows, _ = predicted
    by_point: dict[str, set[str]] = {}
    for r in rows:
        by_point.setdefault(r.point, set()).add(r.metric)
    for point in load_published().points:
        wanted = {ROW_METRIC.get(m, m) for m in point.measured.given()} - {None}
        assert by_point.get(point.id, set()) >= wanted, point.id


def test_no_point_raised_and_fitting_points_have_figures(predicted: tuple[list, dict]) -> None:
    rows, _ = predicted
    raised = [r for r in rows if r.problem and r.problem.split(":")[0].endswith("Error")]
    assert raised == []
    for r in rows:
        if r.predicted is None:
            assert r.problem, f"{r.point} {r.metric}: no figure and no reason"
        elif r.metric != "started":
            assert r.error_pct is not None


def test_stated_mappings() -> None:
    points = {p.id: p for p in load_published().points}
    nim = next(p for p in points.values() if p.conditions.engine == "nim")
    opts, notes = options_for(nim)
    assert opts.engine == "tensorrt-llm" and any("tensorrt-llm" in n for n in notes)
    for repo, path in MODEL_FILES.items():
        assert path.is_file()
        assert model_from_file(path).name == repo
        users = [p for p in points.values() if p.conditions.model == repo]
        assert users and all(options_for(p)[0].model == str(path) for p in users)


def test_summary_names_every_metric_and_the_start_check(predicted: tuple[list, dict]) -> None:
    text = summary_table(predicted[0])
    for label, _, _ in SUMMARY:
        assert label in text
    assert "started vs fits" in text


def test_e2e_is_predicted_and_summarised_per_half(predicted: tuple[list, dict]) -> None:
    rows = [r for r in predicted[0] if r.metric == "e2e_ms"]
    assert {r.split for r in rows if r.error_pct is not None} == {"fit", "held_out"}
    e2e_line = next(line for line in summary_table(predicted[0]).splitlines() if line.startswith("e2e_ms"))
    assert "no points" not in e2e_line and e2e_line.count("(n=") == 3
