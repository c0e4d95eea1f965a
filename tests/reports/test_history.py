"""The reports history and `python -m reports list|show|delete|export`: real files in a temporary folder."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from result_docs import record, result_of, run_of

from reports import store
from reports.__main__ import main
from reports.benchmark_result import BenchmarkResult
from reports.history import INDEX_NAME, Filters, History
from reports.readiness_report import ReadinessReport

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PREFLIGHT_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "history"


def _report() -> ReadinessReport:
    return store.load(FIXTURES / "readiness-report.v1.json", ReadinessReport)


def _bench(label: str | None = None) -> BenchmarkResult:
    return result_of([run_of([record(0, 0.0, [0.1, 0.2, 0.3]), record(1, 0.0, [0.2, 0.3])])]).model_copy(
        update={"label": label}
    )


def test_every_kind_round_trips_through_save_list_and_load(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = History(home)
    report, bench = _report(), _bench("after the driver update")
    history.save(report)
    history.save(bench)
    entries = history.entries()
    assert [e.id for e in entries] == [bench.id, report.id]  # newest first
    assert entries[0].label == "after the driver update" and entries[0].kind == "benchmark"
    assert entries[1].verdict == "NOT_READY" and entries[1].model == "smollm2-135m-instruct"
    assert history.load(report.id) == report and history.load(bench.id) == bench
    assert main(["list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["id"] for e in listed] == [bench.id, report.id]
    assert main(["show", report.id[:8]]) == 0
    assert "# Preflight readiness: **NOT_READY**" in capsys.readouterr().out


def test_history_is_private(home: Path) -> None:
    path = History(home).save(_bench())
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"kind": "preflight.benchmark-result", "schema_version": 2, "tool"', "not a JSON document"),
        (b'{"hello": "world"}', "not a Preflight document"),
        (b'{"kind": "preflight.readiness-report", "schema_version": 99}', "written by a newer Preflight"),
        (b"\xff\xfe garbage", "not a JSON document"),
        (b"[" * 50_000, "nested too deeply"),
    ],
)
def test_corrupt_and_foreign_files_are_listed_as_unreadable_and_kept(
    home: Path, content: bytes, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    history = History(home)
    good = history.save(_bench())
    bad = home / "zz-broken.json"
    bad.write_bytes(content)
    entries = history.entries(Filters(kind="benchmark"))
    assert entries[0].id == good.stem
    assert entries[-1].file == "zz-broken.json" and reason in (entries[-1].unreadable or "")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "UNREADABLE" in out and "zz-broken.json" in out
    assert bad.read_bytes() == content  # never touched


def test_the_index_is_a_cache_the_files_win(home: Path) -> None:
    history = History(home)
    first = history.save(_bench("one"))
    assert [e.label for e in history.entries()] == ["one"]
    (home / INDEX_NAME).write_text("{corrupt")
    assert [e.label for e in history.entries()] == ["one"]  # rebuilt from the files
    doc = store.load(first, BenchmarkResult).model_copy(update={"label": "renamed"})
    store.save(doc, first, overwrite=True)
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    assert [e.label for e in history.entries()] == ["renamed"]
    first.unlink()
    assert history.entries() == []


def test_filters(home: Path) -> None:
    history = History(home)
    history.save(_report())
    history.save(_bench())
    assert [e.kind for e in history.entries(Filters(kind="readiness"))] == ["readiness"]
    assert len(history.entries(Filters(target="127.0.0.1:8123"))) == 1
    assert history.entries(Filters(target="nowhere")) == []


def test_since_accepts_relative_and_iso_dates(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    History(home).save(_bench())
    old = _report()
    History(home).save(old.model_copy(update={"started_at": old.started_at.replace(year=2025)}))
    assert main(["list", "--since", "2025-12-04T18:00", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["list", "--since", "1h", "--json"]) == 0
    assert [e["kind"] for e in json.loads(capsys.readouterr().out)] == ["benchmark"]
    with pytest.raises(SystemExit):
        main(["list", "--since", "last tuesday"])


def test_ids_prefixes_and_files(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = History(home)
    a, b = _bench(), _bench()
    for doc in (a.model_copy(update={"id": "run-aaa1"}), b.model_copy(update={"id": "run-aaa2"})):
        history.save(doc)
    assert history.load("run-aaa1").id == "run-aaa1"
    with pytest.raises(store.DocumentError, match="matches 2 documents: run-aaa1, run-aaa2"):
        history.load("run-aaa")
    with pytest.raises(store.DocumentError, match="no document 'nope'"):
        history.load("nope")
    with pytest.raises(store.DocumentError, match="neither a report file nor a history id"):
        history.load("../no/such/place")
    outside = store.save(_bench(), tmp_path / "elsewhere.json")
    assert main(["show", str(outside)]) == 0
    assert main(["delete", str(outside), "--yes"]) == 2  # delete takes history ids only
    assert outside.exists()


def test_delete_asks_unless_yes(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = History(home).save(_bench())
    assert main(["delete", path.stem]) == 2  # stdin is not a terminal under pytest: nothing to ask on
    assert "add --yes" in capsys.readouterr().err and path.exists()
    assert main(["delete", path.stem, "--yes"]) == 0
    assert not path.exists()
    assert main(["delete", path.stem, "--yes"]) == 2


def test_history_flag_overrides_the_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "elsewhere"
    History(folder).save(_bench("x"))
    assert main(["list", "--history", str(folder), "--json"]) == 0
    assert [e["label"] for e in json.loads(capsys.readouterr().out)] == ["x"]


def test_export_writes_markdown_and_junit(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = _report()
    History(home).save(report)
    md, xml = tmp_path / "r.md", tmp_path / "r.xml"
    assert main(["export", report.id, "--format", "md", "--out", str(md)]) == 0
    assert md.read_text().startswith("# Preflight readiness: **NOT_READY**")
    assert main(["export", report.id, "--format", "junit", "--out", str(xml)]) == 0
    assert "<testsuites" in xml.read_text()
    assert main(["export", report.id, "--format", "md", "--out", str(md)]) == 2  # exists, no --force
    assert "exists" in capsys.readouterr().err
    bench = History(home).save(_bench())
    assert main(["export", bench.stem, "--format", "junit", "--out", str(tmp_path / "b.xml")]) == 2
    assert "has no junit export; it has json, html" in capsys.readouterr().err
    assert main(["export", bench.stem, "--format", "html", "--out", str(tmp_path / "b.html")]) == 0
    assert "<svg" in (tmp_path / "b.html").read_text()
