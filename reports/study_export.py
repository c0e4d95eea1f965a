"""An engine study as Markdown and as the body of the HTML export: conditions, table, charts, notes.

A study is read as a table (one row per measured size or format), so both exports lead
with it; the HTML export adds the charts of `STUDY_CHARTS` and `PARETO_CHARTS`, the same
ones the Engine studies page draws. Markdown holds no picture, so of a Pareto chart it
gives the settings on the front. Byte counts are shown in MiB, a figure that was not
measured as "n/a", never 0.
"""

from __future__ import annotations

from html import escape

from reports.figures import BLUE, ORANGE, Figure
from reports.html_parts import Markup, code, figure_html, listing, pairs, table
from reports.markdown import cell, figure
from reports.store import DocumentError
from reports.study_report import (
    PARETO_CHARTS,
    STUDY_CHARTS,
    Cell,
    ParetoChart,
    ParetoPoint,
    StudyChart,
    StudyReport,
)
from reports.svg_charts import Chart, Dot, Series, bar_chart, line_chart, scatter_chart, standalone

MIB = 2**20
COLOURS = (BLUE, ORANGE)
FRONT_LEGEND = ("on the front", "dominated")


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
    if doc.study in PARETO_CHARTS:
        lines += ["", "## Pareto fronts", ""]
        lines += [
            f"- {spec.title} ({spec.x_label}; {spec.y_label}): {cell(front_text(doc, spec))}"
            for spec in PARETO_CHARTS[doc.study]
        ]
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


def _drawable(doc: StudyReport, spec: ParetoChart) -> tuple[list[ParetoPoint], str | None]:
    """The chart's points, and why it cannot be drawn from this study (None when it can)."""
    missing = spec.missing(doc)
    if missing:
        return [], f"No {', '.join(missing)} in this study's rows (saved before the study marked its fronts?)."
    points = spec.points(doc)
    if len(points) < 2:
        return points, f"{len(points)} setting(s) measured both {spec.x} and {spec.y}: a front needs at least 2."
    return points, None


def _front_line(points: list[ParetoPoint]) -> str:
    front = [p.label for p in points if p.on_front]
    on = ", ".join(front) if front else "none marked"
    return f"On the front: {on} (of {len(points)} measured settings)."


def front_text(doc: StudyReport, spec: ParetoChart) -> str:
    """The settings on the front as the study marked them, or why there is no chart."""
    points, why = _drawable(doc, spec)
    return why if why is not None else _front_line(points)


def pareto_figure(doc: StudyReport, spec: ParetoChart) -> Figure:
    """Every measured setting as a labelled dot, the front's (read from the saved rows) highlighted and joined."""
    points, why = _drawable(doc, spec)
    if why is not None:
        return Figure(spec.title, note=why)
    chart = Chart(spec.title, spec.x_label, spec.y_label, height=300)
    dots = [Dot(p.label, p.x, p.y, p.on_front) for p in points]
    svg = scatter_chart(chart, dots, FRONT_LEGEND, symlog_y=spec.symlog, colour=BLUE, highlight_colour=ORANGE)
    return Figure(spec.title, svg=svg, note=_front_line(points))


def study_figures(doc: StudyReport) -> list[Figure]:
    """The study's charts, then its Pareto charts, as the HTML export draws them (the page draws the same specs)."""
    charts = [chart_figure(doc, spec) for spec in STUDY_CHARTS.get(doc.study, ())]
    return charts + [pareto_figure(doc, spec) for spec in PARETO_CHARTS.get(doc.study, ())]


def pareto_svgs(doc: StudyReport) -> dict[str, str]:
    """The study's Pareto charts as SVG files of their own, by file name ('pareto-size.svg'), for docs.

    A study with no Pareto chart, or whose charts cannot be drawn, is a DocumentError that says why."""
    specs = PARETO_CHARTS.get(doc.study)
    if not specs:
        have = ", ".join(PARETO_CHARTS)
        raise DocumentError(f"a {doc.study} study has no Pareto charts; {have} has them")
    out = {}
    for spec in specs:
        fig = pareto_figure(doc, spec)
        if fig.svg is None:
            raise DocumentError(f"{spec.title}: {fig.note}")
        out[f"{spec.name}.svg"] = standalone(fig.svg)
    return out


def study_html_body(doc: StudyReport) -> list[str]:
    """The HTML export's body (the page shell is `reports.html`'s)."""
    heads, rows = _rows(doc)
    figures = [figure_html(fig) for fig in study_figures(doc)]
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
