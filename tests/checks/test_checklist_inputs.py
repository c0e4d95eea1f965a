"""The files a readiness run is judged by (checks.readiness.inputs), without Streamlit: the loaders the CLI's
Checklist and the Checklist page share, and the one line each gives for a bad file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from checks.readiness.inputs import INPUT_ERRORS, input_problem, load_inputs
from reports import store
from tests.result_docs import record, result_of, run_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PROFILE = "name: strict\nsource: our launch review, 2025\nttft_p95_ms: 500\n"


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_good_files_load_as_the_run_uses_them(tmp_path: Path) -> None:
    result = result_of([run_of([record(0, 0.0, [0.1, 0.2, 0.3])])])
    saved = store.save(result, tmp_path / "run.json")
    plan = _write(tmp_path, "plan.json", json.dumps({"model": "m", "options": []}))
    profile = _write(tmp_path, "strict.yaml", PROFILE)
    inputs = load_inputs(str(profile), saved, plan)
    assert inputs.slo.name == "strict" and inputs.slo.ttft_p95_ms == 500
    assert inputs.given is not None and inputs.given.id == result.id
    assert inputs.plan == {"model": "m", "options": []}
    assert [input_problem(f, p) for f, p in (("slo", profile), ("from_path", saved), ("plan_path", plan))] == [None] * 3
    assert load_inputs("chat", None, None).given is None  # a shipped name, nothing handed over: measure now


@pytest.mark.parametrize(
    ("field", "name", "text", "problem"),
    [
        ("from_path", "r.json", '{"kind": "preflight.benchmark-result", ', "{path}: not a JSON document"),
        (
            "from_path",
            "r.json",
            (FIXTURES / "readiness-report.v1.json").read_text(encoding="utf-8"),
            "{path} is a 'preflight.readiness-report' document, not a preflight.benchmark-result",
        ),
        (
            "from_path",
            "r.json",
            json.dumps({"kind": "preflight.benchmark-result", "schema_version": 99}),
            "{path} has schema_version 99, written by a newer Preflight",
        ),
        ("from_path", "r.json", json.dumps({"kind": "preflight.benchmark-result", "schema_version": 2}), "{path}: "),
        ("plan_path", "p.json", "{not json", "the plan {path} is not JSON; write it with python -m planner"),
        ("plan_path", "p.json", "[1, 2]", "the plan {path} has no 'options' list"),
        ("slo", "s.yaml", "name: [unclosed\n", "{path}: not valid YAML at line"),
        ("slo", "s.json", "{", "{path}: not valid JSON"),
        (
            "slo",
            "s.json",
            (FIXTURES / "benchmark-result.v1.json").read_text(encoding="utf-8"),
            "{path} is a 'preflight.benchmark-result' document, not an SLO profile",
        ),
        ("slo", "s.yaml", PROFILE.replace("500", "-1"), "{path}: ttft_p95_ms: Input should be greater than 0"),
    ],
)
def test_a_bad_file_is_one_line_that_names_it(tmp_path: Path, field: str, name: str, text: str, problem: str) -> None:
    path = _write(tmp_path, name, text)
    line = input_problem(field, path)
    assert line is not None and line.startswith(problem.format(path=path)), line
    assert "\n" not in line and "Traceback" not in line
    with pytest.raises(INPUT_ERRORS):  # the run refuses the same file before anything runs
        load_inputs(
            str(path) if field == "slo" else "chat",
            path if field == "from_path" else None,
            path if field == "plan_path" else None,
        )
