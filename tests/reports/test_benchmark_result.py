"""The saved benchmark result: round trips, legacy files, refusals, redaction and the committed JSON Schema.

Documents are built from hand-made records through the same `run_doc` and `summarize`
that `run_benchmark` uses (tests/result_docs.py); the bundled-server tests save and
load a result of a real run.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from result_docs import record, result_of, run_of

from checks.load.benchmark import BenchmarkConfig
from checks.load.endpoint import Endpoint
from checks.load.metrics import summarize
from checks.load.targets import RemoteTarget
from reports import store
from reports.__main__ import main as reports_main
from reports.benchmark_result import (
    LEGACY_SCHEMA,
    BenchmarkResult,
    EndpointDoc,
    load_benchmark_result,
    parse_benchmark_result,
    upgrade_legacy_benchmark,
)
from reports.records import ErrorKind, RequestRecord
from reports.schema_files import (
    DOCUMENTS,
    REGENERATE,
    SCHEMA_DIR,
    schema_name,
    schema_text,
    stale_schemas,
    write_schemas,
)

SECRET_URL = "https://alice:sk-secret-1@gateway.example:8443/v1?api_key=sk-secret-2#frag"
CLEAN_URL = "https://gateway.example:8443/v1"


def _failed(rid: int, send: float) -> RequestRecord:
    return RequestRecord(
        request_id=rid,
        scheduled_s=None,
        ready_s=send,
        send_s=send,
        first_token_s=None,
        chunk_times_s=[],
        chunk_tokens=[],
        end_s=send + 0.01,
        input_tokens=None,
        output_tokens=None,
        token_source=None,
        ok=False,
        http_status=500,
        error_kind=ErrorKind.HTTP,
        error_excerpt="internal error",
    )


@pytest.fixture
def result() -> BenchmarkResult:
    records = [
        record(0, 0.0, [0.05, 0.15, 0.25]),
        record(1, 0.1, [0.12, 0.31]),
        _failed(2, 0.2),
        record(3, -1.0, [-0.5], warmup=True),
    ]
    return result_of([run_of(records)])


def _saved(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(data))
    return path


def _legacy(result: BenchmarkResult) -> dict[str, Any]:
    """The same result as the previous version wrote it: a 'schema' string, isoformat times with +00:00."""
    data = result.model_dump(mode="json")
    del data["kind"], data["schema_version"]
    data["started_at"] = result.started_at.isoformat(timespec="seconds")
    data["finished_at"] = result.finished_at.isoformat(timespec="seconds")
    return {"schema": LEGACY_SCHEMA, **data}


def test_save_then_load_gives_the_same_result(result: BenchmarkResult, tmp_path: Path) -> None:
    path = store.save(result, tmp_path / "bench.json")
    loaded = load_benchmark_result(path)
    assert loaded == result
    (run,) = loaded.runs
    assert summarize(run.records) == run.summary  # every figure recomputes from the saved records
    assert (run.summary.completed, run.summary.failed) == (2, 1)
    assert run.summary.first_errors[0].excerpt == "internal error"
    assert isinstance(run.records[2].error_kind, ErrorKind)
    data = json.loads(path.read_text())
    assert (data["kind"], data["schema_version"]) == (BenchmarkResult.KIND, BenchmarkResult.SCHEMA_VERSION)
    assert parse_benchmark_result(path.read_text()) == result


def test_result_survives_pickling(result: BenchmarkResult) -> None:
    """The dashboard's benchmark child hands its result over a multiprocessing queue, which pickles it."""
    assert pickle.loads(pickle.dumps(result)) == result


def test_legacy_file_is_upgraded(result: BenchmarkResult, tmp_path: Path) -> None:
    legacy = _legacy(result)
    upgraded = upgrade_legacy_benchmark(legacy)
    assert "schema" not in upgraded and (upgraded["kind"], upgraded["schema_version"]) == (BenchmarkResult.KIND, 1)
    assert legacy["schema"] == LEGACY_SCHEMA  # the input is left as it was
    loaded = load_benchmark_result(_saved(tmp_path, legacy))
    assert loaded.id.startswith("v1-") and loaded.label is None  # legacy files predate ids: one from the content
    assert loaded.model_copy(update={"id": result.id}) == result
    assert parse_benchmark_result(json.dumps(legacy)) == loaded


@pytest.mark.parametrize(
    "data",
    [[1, 2], {"schema": "preflight.benchmark/2"}, {"kind": "preflight.benchmark-result", "schema_version": 1}],
)
def test_upgrade_leaves_other_data_alone(data: Any) -> None:
    assert upgrade_legacy_benchmark(data) is data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d.update(schema_version=3),
            "{path} has schema_version 3, written by a newer Preflight; this one reads up to 2",
        ),
        (
            lambda d: d.update(kind="preflight.readiness-report"),
            "{path} is a 'preflight.readiness-report' document, not a preflight.benchmark-result",
        ),
        (lambda d: d.pop("kind"), "{path} is not a Preflight document (no 'kind'), not a preflight.benchmark-result"),
        (lambda d: d.update(speed="fast"), "{path}: speed: Extra inputs are not permitted"),
        (
            lambda d: d["runs"][0]["records"][0].update(latency_ms=3),
            "{path}: runs.0.records.0.latency_ms: Unexpected keyword argument",
        ),
        (
            lambda d: d["runs"][0]["summary"].update(p999_ttft_ms=3),
            "{path}: runs.0.summary.p999_ttft_ms: Extra inputs are not permitted",
        ),
        (
            lambda d: d["runs"][0]["records"][0].update(chunk_tokens=[1]),  # RequestRecord.__post_init__ still runs
            "{path}: runs.0.records.0: Value error, request 0: chunk_times_s has 3 entries but chunk_tokens has 1;"
            " append one token count per content chunk",
        ),
    ],
)
def test_bad_documents_are_one_line(result: BenchmarkResult, tmp_path: Path, change: Any, message: str) -> None:
    data = json.loads(store.to_json(result))
    change(data)
    path = _saved(tmp_path, data)
    with pytest.raises(store.DocumentError) as info:
        load_benchmark_result(path)
    assert str(info.value) == message.format(path=path)


def test_corrupt_and_missing_files_are_one_line(result: BenchmarkResult, tmp_path: Path) -> None:
    path = tmp_path / "cut.json"
    path.write_text(store.to_json(result)[:100])
    with pytest.raises(store.DocumentError, match=rf"^{path}: not a JSON document \(.*\)$") as info:
        load_benchmark_result(path)
    assert "\n" not in str(info.value)
    with pytest.raises(store.DocumentError, match=rf"^{tmp_path / 'none.json'}: no such file$"):
        load_benchmark_result(tmp_path / "none.json")


def test_urls_lose_userinfo_and_query_everywhere(result: BenchmarkResult) -> None:
    """Gateways put keys in userinfo and in the query; neither reaches a result, built or loaded.

    A live run refuses such a target outright (issue 16, item 11: checks.load.endpoint.check_target_url); the
    documents still redact every URL, for files written elsewhere or before that rule."""
    with pytest.raises(ValueError, match="holds a user name or key"):
        Endpoint(base_url=SECRET_URL, model="m", api_key="sk-secret-3")
    with pytest.raises(ValueError, match="holds a user name or key"):
        BenchmarkConfig(target=SECRET_URL, api_key="sk-secret-3")
    endpoint = EndpointDoc(
        base_url=SECRET_URL,
        model="m",
        api="chat",
        api_key_set=True,
        supports_ignore_eos=True,
        supports_stream_usage=True,
    )
    config = BenchmarkConfig.model_construct(
        **{**BenchmarkConfig().model_dump(), "target": SECRET_URL, "api_key": "sk-secret-3"}
    )
    doc = result.model_copy(
        update={
            "config": config.redacted(),
            "endpoint": endpoint,
            "target": RemoteTarget(SECRET_URL, "sk-secret-3", "m").describe(),
        }
    )
    text = store.to_json(doc)
    assert "sk-secret" not in text and "alice" not in text and "frag" not in text
    data = json.loads(text)
    assert data["endpoint"]["base_url"] == data["target"]["base_url"] == data["config"]["target"] == CLEAN_URL
    assert data["config"]["api_key_set"] is True and data["endpoint"]["api_key_set"] is True
    # A file written elsewhere with a secret in a URL is redacted when it is read.
    data["endpoint"]["base_url"] = data["target"]["base_url"] = data["config"]["target"] = SECRET_URL
    loaded = parse_benchmark_result(json.dumps(data))
    assert "sk-secret" not in store.to_json(loaded)
    data["config"]["api_key"] = "sk-secret-4"
    with pytest.raises(store.DocumentError, match="config: Value error, config must not hold api_key"):
        parse_benchmark_result(json.dumps(data))


def test_committed_schema_matches_the_model() -> None:
    stale = stale_schemas()
    assert not stale, f"JSON Schema out of date: {', '.join(map(str, stale))}; regenerate with `{REGENERATE}`"
    schema = json.loads((SCHEMA_DIR / schema_name(BenchmarkResult)).read_text())
    assert schema["properties"]["kind"]["const"] == BenchmarkResult.KIND
    assert schema["additionalProperties"] is False


def test_schema_files_are_written_where_asked(tmp_path: Path) -> None:
    expected = [tmp_path / schema_name(model) for model in DOCUMENTS]
    assert tmp_path / schema_name(BenchmarkResult) in expected
    assert stale_schemas(tmp_path) == expected
    assert write_schemas(tmp_path) == expected
    assert stale_schemas(tmp_path) == []
    assert (tmp_path / schema_name(BenchmarkResult)).read_text().endswith("}\n")
    assert schema_text(BenchmarkResult) == (SCHEMA_DIR / schema_name(BenchmarkResult)).read_text()


def test_reports_schema_command_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Into a temporary folder: rewriting the committed files here would hide a stale one from the test above."""
    assert reports_main(["schema", "--dir", str(tmp_path)]) == 0
    assert f"wrote {tmp_path / schema_name(BenchmarkResult)}\n" in capsys.readouterr().err
    assert (tmp_path / schema_name(BenchmarkResult)).read_text() == schema_text(BenchmarkResult)
