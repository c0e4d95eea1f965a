"""`StudyReport`: the saved document of one engine study (kv, quant, batch, precision or compress), for the history.

An engine study measures the bundled engine on this machine (`python -m engine study`, or
the Engine studies page) and returns its conditions, one row per measured point, and
notes. This document keeps exactly that, plus who the run is (id, label), when it ran and
the command that repeats it, so a study sits in the history beside readiness reports and
benchmark results and can be exported as Markdown or HTML for a review.

`reports` does not import the engine: a study's rows are kept as plain JSON values, and
the engine fills them through `StudyReport.from_study(result.to_dict(), ...)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from reports import store
from reports.identity import DocumentId, Label, new_document_id

Scalar = str | int | float | bool | None
Cell = Scalar | list[Scalar]  # a condition can be a list (the sizes a study ran)
StudyName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
ENGINE_SCHEMA_VERSION = 1  # the engine's StudyResult.to_dict() layout this model reads


class StudyReport(BaseModel):
    """One engine study (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    KIND: ClassVar[str] = "preflight.engine-study"
    SCHEMA_VERSION: ClassVar[int] = 1
    MIGRATIONS: ClassVar[dict[int, store.Migration]] = {}

    kind: Literal["preflight.engine-study"] = "preflight.engine-study"
    schema_version: int = 1
    id: DocumentId = Field(default_factory=new_document_id, description="names this study in the history")
    label: Label | None = Field(None, description="the user's name for this run")
    tool_version: str
    study: StudyName = Field(description="which study: kv, quant, batch, precision or compress")
    title: str = Field(description="what the study measures, as its console table is headed")
    started_at: AwareDatetime
    finished_at: AwareDatetime
    command: str = Field(description="the shell command that repeats this study with the same sizes")
    conditions: dict[str, Cell] = Field(description="hardware, software, model, format, date and sizes")
    rows: list[dict[str, Cell]] = Field(description="one row per measured point; None where not measured")
    notes: list[str] = Field(default_factory=list)

    @property
    def target(self) -> str:
        """The bundled engine in the format the study used ('bundled:int4'); a quant study spans formats."""
        fmt = self.conditions.get("format")
        return "bundled" if self.study == "quant" or not isinstance(fmt, str) else f"bundled:{fmt}"

    @property
    def model(self) -> str | None:
        name = self.conditions.get("model")
        return name if isinstance(name, str) else None

    def columns(self) -> list[str]:
        """Every row key, in first-seen order: the table's columns."""
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)

    @classmethod
    def from_study(cls, result: dict[str, Any], **fields: Any) -> StudyReport:
        """The document of an engine `StudyResult.to_dict()`; `fields` gives the rest (times, title, command)."""
        version = result.get("schema_version")
        if version != ENGINE_SCHEMA_VERSION:
            raise store.DocumentError(
                f"an engine study of layout {version!r}; this Preflight reads layout {ENGINE_SCHEMA_VERSION}"
            )
        return cls(
            study=result["study"], conditions=result["conditions"], rows=result["rows"], notes=result["notes"], **fields
        )


@dataclass(frozen=True, slots=True)
class StudyChart:
    """One chart of a study: row key `x` across (categorical when it holds text), one line or bar set per y."""

    title: str
    x: str
    x_label: str
    ys: tuple[tuple[str, str], ...]  # (row key, series label)
    y_label: str
    scale: float = 1.0  # multiplies every y (bytes -> MiB)

    def series(self, doc: StudyReport) -> list[tuple[str, list[tuple[Scalar, float | None]]]]:
        """(label, [(x, y)]) per y key; a missing or non-numeric y is None, a gap."""
        out = []
        for key, label in self.ys:
            points = []
            for row in doc.rows:
                y = row.get(key)
                number = float(y) * self.scale if isinstance(y, int | float) and not isinstance(y, bool) else None
                x = row.get(self.x)
                points.append((x if not isinstance(x, list) else None, number))
            out.append((label, points))
        return out


# The charts the page and the HTML export draw for each study: one home, so both show the same.
STUDY_CHARTS: dict[str, tuple[StudyChart, ...]] = {
    "kv": (
        StudyChart(
            "Decode tok/s vs sequence length",
            "seq_len",
            "sequence length (tokens)",
            (("cached_decode_tok_s", "KV cache on"), ("uncached_decode_tok_s", "KV cache off")),
            "decode tok/s",
        ),
    ),
    "quant": (
        StudyChart("Decode tok/s", "format", "weight format", (("decode_tok_s", "decode tok/s"),), "tok/s"),
        StudyChart("Weight memory", "format", "weight format", (("weight_bytes", "weights"),), "MiB", scale=1 / 2**20),
    ),
    "batch": (
        StudyChart("Aggregate decode tok/s", "batch_size", "batch size", (("aggregate_tok_s", "tok/s"),), "tok/s"),
        StudyChart("Per-token latency", "batch_size", "batch size", (("per_token_latency_ms", "ms/token"),), "ms"),
    ),
    # The compress study also has the two Pareto charts of `PARETO_CHARTS`.
    "compress": (
        StudyChart("Weight memory", "setting", "setting", (("weight_bytes", "weights"),), "MiB", scale=1 / 2**20),
        StudyChart("Decode tok/s", "setting", "setting", (("decode_tok_s", "decode tok/s"),), "tok/s"),
        StudyChart("Mean KL against fp32", "setting", "setting", (("mean_kl_nats", "mean KL"),), "nats"),
    ),
}


def _number(value: Cell) -> float | None:
    """A cell as a finite float; text, a flag, a list, None or NaN (a hand-edited file) is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class ParetoPoint:
    """One measured setting of a Pareto chart: its name, cost (x, scaled), quality (y) and the study's mark."""

    label: str
    x: float
    y: float
    on_front: bool


@dataclass(frozen=True, slots=True)
class ParetoChart:
    """Quality (row key `y`, less is better) against one cost (row key `x`), with the frontier the study marked.

    The frontier is read from the row key `front` that the study saved (engine/studies/pareto.py computed
    it from the unrounded figures); drawing it never recomputes it, so a chart shows what the table says.
    `name` is the chart's file name when it is exported on its own (docs/pareto-size.svg).
    """

    name: str
    title: str
    x: str
    front: str
    x_label: str  # says which way is better: the cost's direction differs per chart
    scale: float = 1.0  # multiplies every x (bytes -> MiB)
    y: str = "mean_kl_nats"
    y_label: str = "mean KL vs fp32 (nats), lower is better"
    symlog: float = 0.01  # y on a symlog axis: KL runs from 0 (fp32 itself) to ~10 nats (a broken model)
    label: str = "setting"

    def keys(self) -> tuple[str, ...]:
        return (self.label, self.x, self.y, self.front)

    def missing(self, doc: StudyReport) -> list[str]:
        """The row keys this chart needs that no row of the study has (a study saved before it marked fronts)."""
        have = set(doc.columns())
        return [k for k in self.keys() if k not in have]

    def points(self, doc: StudyReport) -> list[ParetoPoint]:
        """The rows with both a cost and a quality figure, in the study's order; the others cannot be placed."""
        out = []
        for row in doc.rows:
            x, y = _number(row.get(self.x)), _number(row.get(self.y))
            if x is not None and y is not None:
                name = row.get(self.label)
                out.append(
                    ParetoPoint("n/a" if name is None else str(name), x * self.scale, y, row.get(self.front) is True)
                )
        return out


# The Pareto charts the page and the HTML export draw (quality against size and against decode speed).
PARETO_CHARTS: dict[str, tuple[ParetoChart, ...]] = {
    "compress": (
        ParetoChart(
            "pareto-size",
            "Quality against size",
            "weight_bytes",
            "pareto_size",
            "weights (MiB), fewer is better",
            scale=1 / 2**20,
        ),
        ParetoChart(
            "pareto-speed",
            "Quality against decode speed",
            "decode_tok_s",
            "pareto_speed",
            "decode tok/s, more is better",
        ),
    ),
}
