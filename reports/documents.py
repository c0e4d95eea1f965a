"""Any saved Preflight document, by its `kind`: the one place that maps kinds to models.

`python -m reports show|export|compare` and the history take a file without being told
what it holds; this reads its `kind` and hands it to the right model (with the legacy
benchmark upgrade and the schema migrations that `store` applies).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from reports import store
from reports.benchmark_result import BenchmarkResult, upgrade_legacy_benchmark
from reports.readiness_report import ReadinessReport
from reports.study_report import StudyReport

Measured = ReadinessReport | BenchmarkResult  # the kinds with request records: what a comparison reads
Document = ReadinessReport | BenchmarkResult | StudyReport
MODELS: dict[str, type[ReadinessReport] | type[BenchmarkResult] | type[StudyReport]] = {
    ReadinessReport.KIND: ReadinessReport,
    BenchmarkResult.KIND: BenchmarkResult,
    StudyReport.KIND: StudyReport,
}
ShortKind = Literal["readiness", "benchmark", "study"]
SHORT_KIND: dict[str, ShortKind] = {
    ReadinessReport.KIND: "readiness",
    BenchmarkResult.KIND: "benchmark",
    StudyReport.KIND: "study",
}
SHORT_KINDS: tuple[ShortKind, ...] = tuple(SHORT_KIND.values())


def measured(doc: Document) -> Measured:
    """`doc` as a document with request records; DocumentError for an engine study, which has none to compare."""
    if isinstance(doc, StudyReport):
        raise store.DocumentError(
            f"{doc.id} is an engine study: it has no request records to compare; export or show it instead"
        )
    return doc


def from_data(data: Any, source: str = "document") -> Document:
    """The document `data` (parsed JSON) is, by its kind; DocumentError with one line otherwise."""
    data = upgrade_legacy_benchmark(data)
    kind = data.get("kind") if isinstance(data, dict) else None
    model = MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        known = ", ".join(MODELS)
        what = f"a {kind!r} document" if isinstance(kind, str) else "not a Preflight document (no 'kind')"
        raise store.DocumentError(f"{source} is {what}; expected one of {known}")
    return store.from_data(data, model, source)


def parse(text: str | bytes, source: str = "document") -> Document:
    return from_data(store.loads(text, source), source)


def load(path: Path) -> Document:
    """A saved report, benchmark result or engine study, whichever the file holds."""
    return parse(store.read_bytes(path), str(path))
