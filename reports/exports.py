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


@dataclass(frozen=True)
class Format:
    name: str  # the --format value
    label: str  # what a download button says
    extension: str
    mime: str
    render: Callable[[Any], str]
    kinds: tuple[type[ReadinessReport] | type[BenchmarkResult], ...]  # the models it applies to


BOTH = (ReadinessReport, BenchmarkResult)
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("json", "JSON", "json", "application/json", store.to_json, BOTH),
    Format("html", "HTML", "html", "text/html", to_html, BOTH),
    Format("md", "Markdown", "md", "text/markdown", to_markdown, (ReadinessReport,)),
    Format("junit", "JUnit XML", "xml", "application/xml", to_junit, (ReadinessReport,)),
)}  # fmt: skip


def formats_for(doc: Document) -> list[Format]:
    return [f for f in FORMATS.values() if isinstance(doc, f.kinds)]


def export(doc: Document, name: str) -> str:
    """`doc` rendered as format `name`; DocumentError when that kind has no such format."""
    fmt = FORMATS.get(name)
    if fmt is None:
        raise store.DocumentError(f"no export format {name!r}; choose one of {', '.join(FORMATS)}")
    if not isinstance(doc, fmt.kinds):
        have = ", ".join(f.name for f in formats_for(doc))
        raise store.DocumentError(f"a {SHORT_KIND[doc.KIND]} document has no {name} export; it has {have}")
    return fmt.render(doc)
