"""Building blocks of the HTML export: escaped tables, key/value lists, status badges, figures.

One rule lives here: text from a document is escaped on its way into the page. A cell is
plain text (escaped here) unless it is `Markup` that this package built itself, so a
server's error excerpt or a model name such as `<script>` can only ever show as text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from reports.check_result import CheckStatus
from reports.figures import Figure
from reports.markdown import figure

GIB = 2**30


class Markup(str):
    """HTML this package wrote itself; every other string is escaped before it reaches the page."""

    __slots__ = ()


def cell(value: object) -> str:
    """Escaped text for a table cell or paragraph; None shows as a dash (not measured), Markup as is."""
    if isinstance(value, Markup):
        return value
    return "-" if value is None else escape(str(value))


def status_badge(status: CheckStatus) -> Markup:
    return Markup(f'<span class="badge st-{status.value}">{status.value}</span>')


def code(text: str) -> Markup:
    return Markup(f"<code>{escape(text)}</code>")


def table(head: Sequence[str], rows: Iterable[Sequence[object]], css: str = "") -> Markup:
    """A table with a header row; every cell goes through `cell`."""
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    klass = f' class="{escape(css)}"' if css else ""
    return Markup(f"<table{klass}><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>")


def pairs(items: Iterable[tuple[str, object]]) -> Markup:
    """A two-column key/value table, e.g. the environment; keys are escaped too (they may come from a file)."""
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{cell(v)}</td></tr>" for k, v in items)
    return Markup(f'<table class="pairs"><tbody>{rows}</tbody></table>')


def size(n_bytes: int | None) -> str:
    """A byte count as stored, with GiB beside it for the reader; None (not measured) as a dash."""
    return "-" if n_bytes is None else f"{n_bytes} ({n_bytes / GIB:.1f} GiB)"


def flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """A nested dict (environment, plan, config) as dotted keys and printable values; byte counts also in GiB."""
    out: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += flatten(value, f"{name}.")
        elif isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                out += flatten(item, f"{name}[{i}].") if isinstance(item, Mapping) else [(f"{name}[{i}]", str(item))]
        elif isinstance(value, list):
            out.append((name, ", ".join(str(v) for v in value) if value else "none"))
        elif isinstance(value, int) and not isinstance(value, bool) and str(key).endswith("_bytes"):
            out.append((name, size(value)))
        else:
            out.append((name, "-" if value is None else str(value)))
    return out


def with_ci(value: float | None, ci: tuple[float, float] | None, unit: str) -> str:
    """A percentile with its bootstrap 95% interval, e.g. '212 ms [198, 231]'."""
    text = figure(value, unit)
    return text if ci is None else f"{text} [{ci[0]:.4g}, {ci[1]:.4g}]"


def figure_html(fig: Figure) -> Markup:
    """A chart (its title is drawn inside the SVG) with the note as caption, or the note that stands in for it."""
    if fig.svg is None:
        note = f'<p class="note">{escape(fig.note or "Nothing to draw.")}</p>'
        return Markup(f'<div class="figure empty"><h4>{escape(fig.title)}</h4>{note}</div>')
    caption = f"<figcaption>{escape(fig.note)}</figcaption>" if fig.note else ""
    return Markup(f'<figure class="figure">{fig.svg}{caption}</figure>')


def listing(items: Iterable[str], css: str = "") -> Markup:
    """A bullet list of document text (warnings, notes); empty input gives an empty string."""
    lis = "".join(f"<li>{escape(i)}</li>" for i in items)
    klass = f' class="{escape(css)}"' if css else ""
    return Markup(f"<ul{klass}>{lis}</ul>" if lis else "")
