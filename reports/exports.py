"""Every export format of every document kind, in one table: the CLIs and the pages all go through it.

A format a kind does not have (JUnit of a benchmark result: it has no checks) is a
DocumentError that says so, not an empty file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reports import store
from reports.benchmark_result import BenchmarkResult
from reports.documents import SHORT_KIND, Document
from reports.html import to_html
from reports.junit import to_junit
from reports.markdown import to_markdown
from reports.readiness_report import ReadinessReport
from reports.study_export import study_markdown
from reports.study_report import StudyReport


@dataclass(frozen=True)
class Format:
    name: str  # the --format value
    label: str  # what a download button says
    extension: str
    mime: str
    renderers: dict[type[Any], Callable[[Any], str]]  # the models it applies to, each with its renderer

    def applies_to(self, doc: Document) -> bool:
        return type(doc) in self.renderers


ALL = (ReadinessReport, BenchmarkResult, StudyReport)
FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("json", "JSON", "json", "application/json", dict.fromkeys(ALL, store.to_json)),
        Format("html", "HTML", "html", "text/html", dict.fromkeys(ALL, to_html)),
        Format("md", "Markdown", "md", "text/markdown", {ReadinessReport: to_markdown, StudyReport: study_markdown}),
        Format("junit", "JUnit XML", "xml", "application/xml", {ReadinessReport: to_junit}),
    )
}


def formats_for(doc: Document) -> list[Format]:
    return [f for f in FORMATS.values() if f.applies_to(doc)]


def export(doc: Document, name: str) -> str:
    """`doc` rendered as format `name`; DocumentError when that kind has no such format."""
    fmt = FORMATS.get(name)
    if fmt is None:
        raise store.DocumentError(f"no export format {name!r}; choose one of {', '.join(FORMATS)}")
    if not fmt.applies_to(doc):
        have = ", ".join(f.name for f in formats_for(doc))
        raise store.DocumentError(f"a {SHORT_KIND[doc.KIND]} document has no {name} export; it has {have}")
    return fmt.renderers[type(doc)](doc)
