"""An engine study as Markdown and as the body of the HTML export: conditions, table, charts, notes.

A study is read as a table (one row per measured size or format), so both exports lead
with it; the HTML export adds the charts of `STUDY_CHARTS`, the same ones the Engine
studies page draws. Byte counts are shown in MiB, a figure that was not measured as
"n/a", never 0.
"""

from __future__ import annotations

from html import escape

from reports.figures import BLUE, ORANGE, Figure
from reports.html_parts import Markup, code, figure_html, listing, pairs, table
from reports.markdown import cell, figure
from reports.study_report import STUDY_CHARTS, Cell, StudyChart, StudyReport
from reports.svg_charts import Chart, Series, bar_chart, line_chart

MIB = 2**20
COLOURS = (BLUE, ORANGE)


def header(key: str) -> str:
    """A column's title: byte columns are shown in MiB."""
    return f"{key.removesuffix('_bytes')} MiB" if key.endswith("_bytes") else key


def value_text(key: str, value: Cell) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(value_text(key, v) for v in value)
    if key.endswith("_bytes") and isinstance(value, int | float):
        return f"{value / MIB:.1f}"
    return figure(value, None)


def _rows(doc: StudyReport) -> tuple[list[str], list[list[str]]]:
    keys = doc.columns()
    return [header(k) for k in keys], [[value_text(k, row.get(k)) for k in keys] for row in doc.rows]


def _overview(doc: StudyReport) -> list[tuple[str, str]]:
    ran = (
        f"{doc.started_at.isoformat(timespec='seconds')} to {doc.finished_at.isoformat(timespec='seconds')} "
        f"with Preflight {doc.tool_version}"
    )
    return [
        ("Study", f"{doc.study}: {doc.title}"),
        ("Target", doc.target),
        ("Model", doc.model or "n/a"),
        ("Label", doc.label or "-"),
        ("Ran", ran),
        ("Id", doc.id),
    ]


def study_markdown(doc: StudyReport) -> str:
    """A review page: what ran, the table, the notes, the conditions and the command that repeats it."""
    heads, rows = _rows(doc)
    lines = [f"# Preflight engine study: {doc.study}", "", f"{doc.title}.", ""]
    lines += [f"- {name}: {cell(value)}" for name, value in _overview(doc)]
    lines += ["", "## Measurements", ""]
    if rows:
        lines += ["| " + " | ".join(cell(h) for h in heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    else:
        lines.append("No point was measured.")
    if doc.notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in doc.notes)]
    lines += ["", "## Conditions", "", "| Condition | Value |", "|---|---|"]
    lines += [f"| {cell(k)} | {cell(value_text(k, v))} |" for k, v in doc.conditions.items()]
    lines += ["", "## Reproduce", "", "```bash", doc.command, "```", ""]
    return "\n".join(lines)


def chart_figure(doc: StudyReport, spec: StudyChart) -> Figure:
    """A spec drawn as SVG: bars across a categorical x (weight formats), lines across a numeric one."""
    series = spec.series(doc)
    chart = Chart(spec.title, spec.x_label, spec.y_label)
    if not any(y is not None for _, points in series for _, y in points):
        return Figure(spec.title, note="Nothing was measured.")
    numeric_x = all(isinstance(x, int | float) and not isinstance(x, bool) for _, pts in series for x, _ in pts)
    if not numeric_x:
        label, points = series[0]
        return Figure(spec.title, svg=bar_chart(chart, [(str(x), y) for x, y in points]))
    lines = [
        Series(label, [(float(x), y) for x, y in points], COLOURS[i % len(COLOURS)])  # type: ignore[arg-type]
        for i, (label, points) in enumerate(series)
    ]
    return Figure(spec.title, svg=line_chart(chart, lines))


def study_html_body(doc: StudyReport) -> list[str]:
    """The HTML export's body (the page shell is `reports.html`'s)."""
    heads, rows = _rows(doc)
    figures = [figure_html(chart_figure(doc, spec)) for spec in STUDY_CHARTS.get(doc.study, ())]
    out = [
        f"<h1>Preflight engine study: {escape(doc.study)}</h1>",
        f"<p>{escape(doc.title)}.</p>",
        pairs(_overview(doc)),
    ]
    if figures:
        out.append('<div class="figures">' + "".join(figures) + "</div>")
    measured = Markup(f'<div class="wide">{table(heads, rows)}</div>') if rows else '<p class="note">None measured.</p>'
    out += ["<h2>Measurements</h2>", measured]
    if doc.notes:
        out += ["<h2>Notes</h2>", listing(doc.notes)]
    out += ["<h2>Conditions</h2>", pairs((k, value_text(k, v)) for k, v in doc.conditions.items())]
    out += ["<h2>Reproduce</h2>", Markup(f"<pre>{escape(doc.command)}</pre>"), f"<p>Id {code(doc.id)}</p>"]
    return out
