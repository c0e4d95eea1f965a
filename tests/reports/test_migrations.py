"""Schema evolution: every older version of every document loads through its ordered migrations.

The fixtures are real files of the older version, committed as written:
`readiness-report.v1.json` is the report of a checklist run against `engine serve
--device cuda` on an H200 (docs/READINESS.md), and `benchmark-result.v1.json` is the
benchmark result that report carries.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from pydantic import BaseModel, ConfigDict

from reports import store
from reports.benchmark_result import BenchmarkResult, load_benchmark_result
from reports.identity import ID_PATTERN, id_from_content, new_document_id
from reports.readiness_report import ReadinessReport
from reports.schema_files import DOCUMENTS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
IDENTITY_FIELDS = {"schema_version", "id", "label"}


def _fixture(model: type[BaseModel], version: int) -> Path:
    kind: str = getattr(model, "KIND")  # noqa: B009
    return FIXTURES / f"{kind.removeprefix('preflight.')}.v{version}.json"


def _without_identity(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in IDENTITY_FIELDS}


OLDER = [(m, v) for m in DOCUMENTS for v in range(1, getattr(m, "SCHEMA_VERSION"))]  # noqa: B009


@pytest.mark.parametrize(("model", "version"), OLDER, ids=[f"{m.__name__}-v{v}" for m, v in OLDER])
def test_every_older_version_has_a_fixture_that_loads(model: type[BaseModel], version: int) -> None:
    path = _fixture(model, version)
    assert path.is_file(), f"commit a file of {model.__name__} schema_version {version} as {path}"
    assert json.loads(path.read_text())["schema_version"] == version
    doc = store.load(path, model)
    assert doc.schema_version == getattr(model, "SCHEMA_VERSION")  # noqa: B009


def test_v1_benchmark_result_gains_a_stable_id_and_keeps_everything_else() -> None:
    path = _fixture(BenchmarkResult, 1)
    raw = json.loads(path.read_text())
    doc = load_benchmark_result(path)
    assert doc.id == load_benchmark_result(path).id == id_from_content(raw)
    assert doc.label is None
    again = json.loads(store.to_json(doc))
    assert _without_identity(again) == _without_identity(
        json.loads(
            store.to_json(BenchmarkResult.model_validate({**raw, "schema_version": 2, "id": doc.id, "label": None}))
        )
    )
    assert len(doc.runs[0].records) == len(raw["runs"][0]["records"])


def test_v1_readiness_report_migrates_the_benchmark_it_carries() -> None:
    report = store.load(_fixture(ReadinessReport, 1), ReadinessReport)
    alone = load_benchmark_result(_fixture(BenchmarkResult, 1))
    assert report.schema_version == 2 and report.id.startswith("v1-")
    assert report.benchmark is not None and report.benchmark.schema_version == 2
    assert report.benchmark.id == alone.id  # the same v1 content gets the same id wherever it is found
    raw = json.loads(_fixture(ReadinessReport, 1).read_text())
    assert [c.id for c in report.checks] == [c["id"] for c in raw["checks"]]


def test_a_migrated_document_saves_as_the_current_version(tmp_path: Path) -> None:
    report = store.load(_fixture(ReadinessReport, 1), ReadinessReport)
    saved = store.save(report, tmp_path / "r.json")
    data = json.loads(saved.read_text())
    assert (data["schema_version"], data["id"]) == (2, report.id)
    assert store.load(saved, ReadinessReport) == report


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    KIND: ClassVar[str] = "preflight.test-doc"
    SCHEMA_VERSION: ClassVar[int] = 3
    MIGRATIONS: ClassVar[dict[int, store.Migration]] = {
        1: lambda d: {**d, "schema_version": 2, "b": d["a"] * 2},
        2: lambda d: {**{k: v for k, v in d.items() if k != "a"}, "schema_version": 3},
    }
    kind: Literal["preflight.test-doc"] = "preflight.test-doc"
    schema_version: int = 3
    b: int


class _Gap(_Doc):
    MIGRATIONS: ClassVar[dict[int, store.Migration]] = {2: _Doc.MIGRATIONS[2]}


class _Broken(_Doc):
    MIGRATIONS: ClassVar[dict[int, store.Migration]] = {1: lambda d: d, 2: _Doc.MIGRATIONS[2]}


def test_steps_run_in_order_from_the_file_version() -> None:
    doc = store.parse('{"kind": "preflight.test-doc", "schema_version": 1, "a": 4}', _Doc)
    assert doc.b == 8
    assert store.parse('{"kind": "preflight.test-doc", "schema_version": 2, "a": 1, "b": 5}', _Doc).b == 5


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_Gap, "f.json: no migration of a preflight.test-doc from schema_version 1"),
        (_Broken, "f.json: migrating from schema_version 1 did not reach 2"),
    ],
)
def test_a_missing_or_broken_step_is_one_line(model: type[BaseModel], message: str) -> None:
    with pytest.raises(store.DocumentError) as info:
        store.parse('{"kind": "preflight.test-doc", "schema_version": 1, "a": 4}', model, "f.json")
    assert str(info.value) == message


@pytest.mark.parametrize("bad", ["../../etc/passwd", "a/b", "", ".hidden", "x" * 81, "id with space"])
def test_an_id_is_always_a_safe_file_name(bad: str) -> None:
    data = json.loads(_fixture(BenchmarkResult, 1).read_text())
    data.update(schema_version=2, id=bad, label=None)
    with pytest.raises(store.DocumentError, match="id: String should match pattern"):
        store.from_data(data, BenchmarkResult, "f.json")


def test_new_ids_sort_by_time_and_differ() -> None:
    ids = {new_document_id() for _ in range(50)}
    assert len(ids) == 50 and all(re.match(ID_PATTERN, i) for i in ids)
