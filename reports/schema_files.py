"""The committed JSON Schema files of Preflight's documents, and the code that writes them.

A pipeline that gates on a saved report validates it against these files without
importing Preflight, so they must match the models exactly; a test compares them and
`python -m reports schema` rewrites them. One file per document kind and schema
version (`benchmark-result.v1.json`): a new version is a new file, and the old one
stays for readers of old documents. To add a document, append its model to
`DOCUMENTS`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from reports.benchmark_result import BenchmarkResult
from reports.compare import Comparison
from reports.readiness_report import ReadinessReport
from reports.slo_profile import SloProfile
from reports.study_report import StudyReport

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
REGENERATE = "python -m reports schema"
DOCUMENTS: list[type[BaseModel]] = [BenchmarkResult, ReadinessReport, SloProfile, Comparison, StudyReport]


def schema_name(model: type[BaseModel]) -> str:
    """`preflight.benchmark-result`, version 1 -> `benchmark-result.v1.json`."""
    kind: str = getattr(model, "KIND")  # noqa: B009 - class-level identifiers every document carries
    version: int = getattr(model, "SCHEMA_VERSION")  # noqa: B009
    return f"{kind.removeprefix('preflight.')}.v{version}.json"


def schema_text(model: type[BaseModel]) -> str:
    """The schema as committed: sorted keys, indent 1, one trailing newline, so diffs stay small and stable."""
    return json.dumps(model.model_json_schema(), sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def stale_schemas(folder: Path = SCHEMA_DIR) -> list[Path]:
    """The schema files that are missing or differ from their model."""
    out = []
    for model in DOCUMENTS:
        path = folder / schema_name(model)
        if not path.is_file() or path.read_text(encoding="utf-8") != schema_text(model):
            out.append(path)
    return out


def write_schemas(folder: Path = SCHEMA_DIR) -> list[Path]:
    """Write every document's schema file into `folder`; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for model in DOCUMENTS:
        path = folder / schema_name(model)
        path.write_text(schema_text(model), encoding="utf-8")
        written.append(path)
    return written
