"""Chart primitives for the HTML export: histogram, line/step, bar and scatter charts, drawn as inline SVG text.

Why our own: the export has to open offline from a file, so it cannot load a chart
library, a font or an image, and it should run no script at all. A chart kind with
axes, ticks, labels, percentile marks and a legend is a few dozen lines of SVG.

Nothing here knows about documents. Callers bin or thin their data first (`bin_values`,
`thin`), so a chart's size depends on its bins and points, never on how many requests a
run sent. Every piece of text goes through `html.escape`, because titles and labels may
come from a report (a model name, a server's error text).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

LEFT, RIGHT, TOP, BOTTOM = 60, 16, 30, 44  # plot-area margins in px: room for tick labels and axis titles
LABEL_CHAR_PX = 6  # about how wide one character of an 11 px label is
FONT = 'font-family="system-ui, sans-serif" font-size="11"'
AXIS_COLOUR, GRID_COLOUR, TEXT_COLOUR = "#555", "#e3e3e3", "#222"
Point = tuple[float, float | None]  # (x, y); y None breaks the line (a gap, e.g. a failed scrape)


@dataclass(frozen=True, slots=True)
class Chart:
    """What every chart has: a title (drawn and read out as the SVG's <title>), axis titles and a size."""

    title: str
    x_label: str
    y_label: str
    width: int = 520
    height: int = 260


@dataclass(frozen=True, slots=True)
class Series:
    """One line. With `step`, each y holds from its x until the next point's x (give a last point to end it)."""

    label: str
    points: Sequence[Point]
    colour: str
    step: bool = False


@dataclass(frozen=True, slots=True)
class Marker:
    """A labelled vertical line at x, e.g. p99 of the values a histogram shows."""

    x: float
    label: str
    colour: str = "#b3261e"


@dataclass(frozen=True, slots=True)
class Dot:
    """One labelled point of a scatter chart; `highlight` draws it in the second colour (e.g. a Pareto front)."""

    label: str
    x: float
    y: float
    highlight: bool = False


@dataclass(frozen=True, slots=True)
class Bins:
    """Equal-width bins: len(edges) == len(counts) + 1."""

    edges: list[float]
    counts: list[int]


def nice_step(span: float, target: int) -> float:
    """A 1, 2 or 5 times a power of ten close to span / target: ticks and bins people can read."""
    raw = span / max(1, target) if span > 0 else 1.0
    if not math.isfinite(raw) or raw < 1e-300:  # an overflowing or subnormal span: any positive step draws
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def tick_text(value: float, step: float) -> str:
    """A tick label with as many decimals as the step needs, so 0.1 + 0.2 prints as 0.3."""
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{value:.{decimals}f}"


def ticks(lo: float, hi: float, target: int = 5) -> tuple[list[float], float]:
    """Round tick values covering lo..hi (the last at or above hi), and their step."""
    step = nice_step(hi - lo, target)
    first = math.floor(lo / step) * step
    count = max(1, math.ceil((hi - first) / step - 1e-9))
    return [first + i * step for i in range(count + 1)], step


def symlog_ticks(hi: float, constant: float) -> list[float]:
    """0, then constant, 10 constant, 100 constant, ... up to the first at or above hi: a symlog axis's ticks."""
    out = [0.0, constant]
    while out[-1] < hi and len(out) < 40:  # 40: a hand-edited 1e300 still ends
        out.append(out[-1] * 10)
    return out


def bin_values(values: Sequence[float], max_bins: int = 40) -> Bins:
    """Values into roughly sqrt(n) to 2 sqrt(n) equal bins (at most max_bins) with round edges.

    Non-finite values (NaN, inf from a hand-edited file) are left out; no values, no bins."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return Bins([], [])
    lo, hi = min(values), max(values)
    target = min(max_bins, max(5, math.ceil(2 * math.sqrt(len(values)))))  # nice_step rounds up: ask for more
    step = nice_step(hi - lo if hi > lo else max(abs(lo), 1.0) / 2, target)
    start = math.floor(lo / step) * step
    n = max(1, math.floor((hi - start) / step) + 1)
    counts = [0] * n
    for v in values:
        counts[min(n - 1, int((v - start) // step))] += 1
    return Bins([start + i * step for i in range(n + 1)], counts)


def thin(points: Sequence[Point], max_points: int) -> list[Point]:
    """At most about max_points points, keeping each bucket's lowest and highest y so peaks survive."""
    if len(points) <= max_points:
        return list(points)
    size = math.ceil(len(points) / max(1, max_points // 2))
    out: list[Point] = []
    for start in range(0, len(points), size):
        bucket = points[start : start + size]
        measured = [p for p in bucket if p[1] is not None]
        if not measured:
            out.append(bucket[0])  # keep the gap visible
            continue
        low = min(measured, key=lambda p: p[1] or 0.0)
        high = max(measured, key=lambda p: p[1] or 0.0)
        out += sorted({low, high}, key=lambda p: p[0])
    return out


@dataclass(frozen=True, slots=True)
class _Frame:
    """Data ranges mapped onto the plot area of a chart; y from y0 up, linear or symlog.

    `symlog` (a constant c) maps y to log10(1 + y / c): linear near 0, logarithmic beyond, so 0 (a
    setting identical to the reference) and 0.0003 and 10 all find a place on one axis."""

    chart: Chart
    x0: float
    x1: float
    y1: float
    y0: float = 0.0
    symlog: float | None = None

    def x(self, value: float) -> float:
        span = self.x1 - self.x0 or 1.0
        return LEFT + (value - self.x0) / span * (self.chart.width - LEFT - RIGHT)

    def _scaled(self, value: float) -> float:
        return value if self.symlog is None else math.log10(1 + value / self.symlog)

    def y(self, value: float) -> float:
        span = self._scaled(self.y1) - self._scaled(self.y0) or 1.0
        share = (self._scaled(value) - self._scaled(self.y0)) / span
        return self.chart.height - BOTTOM - share * (self.chart.height - TOP - BOTTOM)


def _num(value: float) -> str:
    return f"{value:.1f}"


def _text(x: float, y: float, text: str, anchor: str = "middle", extra: str = "") -> str:
    return (
        f'<text x="{_num(x)}" y="{_num(y)}" text-anchor="{anchor}" fill="{TEXT_COLOUR}" {FONT}{extra}>'
        f"{escape(text)}</text>"
    )


def _labelled(values: Sequence[float], step: float) -> list[tuple[float, str]]:
    return [(v, tick_text(v, step)) for v in values]


def _axes(frame: _Frame, x_ticks: list[float], x_step: float, y_ticks: Sequence[tuple[float, str]]) -> list[str]:
    """Grid, axis lines, tick labels and the three titles; y ticks come with their text (a symlog axis's
    ticks each need their own decimals)."""
    c = frame.chart
    bottom, right = c.height - BOTTOM, c.width - RIGHT
    out = [f"<title>{escape(c.title)}</title>", _text(c.width / 2, 18, c.title, extra=' font-weight="600"')]
    for v, label in y_ticks:
        y = frame.y(v)
        out.append(f'<line x1="{LEFT}" y1="{_num(y)}" x2="{right}" y2="{_num(y)}" stroke="{GRID_COLOUR}"/>')
        out.append(_text(LEFT - 6, y + 4, label, anchor="end"))
    for v in x_ticks:
        if frame.x0 - 1e-9 <= v <= frame.x1 + 1e-9:
            x = frame.x(v)
            out.append(f'<line x1="{_num(x)}" y1="{bottom}" x2="{_num(x)}" y2="{bottom + 4}" stroke="{AXIS_COLOUR}"/>')
            out.append(_text(x, bottom + 16, tick_text(v, x_step)))
    out.append(f'<path d="M{LEFT} {TOP} V{bottom} H{right}" fill="none" stroke="{AXIS_COLOUR}"/>')
    out.append(_text((LEFT + right) / 2, c.height - 6, c.x_label))
    mid = (TOP + bottom) / 2
    out.append(_text(14, mid, c.y_label, extra=f' transform="rotate(-90 14 {_num(mid)})"'))
    return out


def _markers(frame: _Frame, markers: Sequence[Marker]) -> list[str]:
    """Dashed verticals with their labels staggered downwards, so close marks (p95, p99) stay legible."""
    out = []
    for i, m in enumerate(sorted(markers, key=lambda m: m.x)):
        x = frame.x(m.x)
        out.append(
            f'<line x1="{_num(x)}" y1="{TOP}" x2="{_num(x)}" y2="{frame.chart.height - BOTTOM}" '
            f'stroke="{escape(m.colour)}" stroke-dasharray="4 3"/>'
        )
        room = frame.chart.width - RIGHT - x
        fits = room > LABEL_CHAR_PX * len(m.label) + 3  # else the label goes to the line's left
        out.append(_text(x + 3 if fits else x - 3, TOP + 10 + 12 * (i % 3), m.label, anchor="start" if fits else "end"))
    return out


def _svg(chart: Chart, body: list[str]) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {chart.width} {chart.height}" width="{chart.width}" '
        f'height="{chart.height}" role="img" aria-label="{escape(chart.title)}">' + "".join(body) + "</svg>"
    )


def histogram(chart: Chart, bins: Bins, markers: Sequence[Marker] = (), colour: str = "#3b6fb6") -> str:
    """Bars of counts over equal bins, with optional vertical markers; each bar says its range and count."""
    if not bins.counts:
        raise ValueError("a histogram needs at least one bin; show a note instead when there are no values")
    markers = [m for m in markers if math.isfinite(m.x)]
    x0 = min([bins.edges[0], *(m.x for m in markers)])
    x1 = max([bins.edges[-1], *(m.x for m in markers)])
    y_ticks, y_step = ticks(0, max(max(bins.counts), 1))
    frame = _Frame(chart, x0, x1, y_ticks[-1])
    x_ticks, x_step = ticks(x0, x1, 6)
    body = _axes(frame, x_ticks, x_step, _labelled(y_ticks, y_step))
    for lo, hi, n in zip(bins.edges, bins.edges[1:], bins.counts, strict=False):
        if n:
            left, top = frame.x(lo), frame.y(n)
            tip = f"{tick_text(lo, x_step / 10)} to {tick_text(hi, x_step / 10)}: {n}"
            body.append(
                f'<rect x="{_num(left)}" y="{_num(top)}" width="{_num(max(frame.x(hi) - left - 1, 1))}" '
                f'height="{_num(frame.y(0) - top)}" fill="{escape(colour)}"><title>{escape(tip)}</title>'
                "</rect>"
            )
    return _svg(chart, body + _markers(frame, markers))


def _path(frame: _Frame, series: Series) -> str:
    """SVG path data; a None y starts a new segment, so a gap shows as a gap."""
    parts: list[str] = []
    pen_down = False
    for x, y in series.points:
        if y is None:
            pen_down = False
            continue
        px, py = _num(frame.x(x)), _num(frame.y(y))
        if not pen_down:
            parts.append(f"M{px} {py}")
        elif series.step:
            parts.append(f"H{px} V{py}")
        else:
            parts.append(f"L{px} {py}")
        pen_down = True
    return " ".join(parts)


Box = tuple[float, float, float, float]  # left, top, right, bottom in px


def _legend_box(chart: Chart, keys: Sequence[Series], left: bool) -> Box:
    """Where the legend's backing goes: the top-left or top-right corner, as wide as its longest label."""
    width = 20 + LABEL_CHAR_PX * max(len(s.label) for s in keys)
    x = LEFT + 8 if left else chart.width - RIGHT - width
    return (x - 4, TOP, x + width, TOP + 14 * len(keys) + 6)


def _legend(chart: Chart, series: Sequence[Series], left: bool = False) -> list[str]:
    """Swatches and labels in the top-right (or top-left) corner, on a light backing so lines under it stay
    readable."""
    box = _legend_box(chart, series, left)
    x = box[0] + 4
    out = [
        f'<rect x="{box[0]}" y="{box[1]}" width="{box[2] - box[0]}" height="{box[3] - box[1]}" fill="#fff" '
        'fill-opacity="0.85"/>'
    ]
    for i, s in enumerate(series):
        y = TOP + 4 + 14 * i
        out.append(f'<rect x="{x}" y="{y}" width="10" height="3" fill="{escape(s.colour)}"/>')
        out.append(_text(x + 14, y + 5, s.label, anchor="start"))
    return out


def _finite(series: Series) -> Series:
    """The series without points it cannot place: a non-finite x is dropped, a non-finite y becomes a gap."""
    points = [(x, y if y is not None and math.isfinite(y) else None) for x, y in series.points if math.isfinite(x)]
    return Series(series.label, points, series.colour, series.step)


def line_chart(
    chart: Chart, series: Sequence[Series], markers: Sequence[Marker] = (), y_max: float | None = None
) -> str:
    """Lines (or steps) over a shared x axis from 0 up on y; y_max fixes the top, e.g. 100 for a percentage."""
    series = [_finite(s) for s in series]
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points if y is not None]
    markers = [m for m in markers if math.isfinite(m.x)]
    if not ys:
        raise ValueError("a line chart needs at least one measured point; show a note instead")
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1.0  # one instant: give the axis a width
    y_ticks, y_step = ticks(0, y_max if y_max is not None else max(max(ys), 1e-9))
    frame = _Frame(chart, x0, x1, y_ticks[-1])
    x_ticks, x_step = ticks(x0, x1, 6)
    body = _axes(frame, x_ticks, x_step, _labelled(y_ticks, y_step))
    for s in series:
        body.append(f'<path d="{_path(frame, s)}" fill="none" stroke="{escape(s.colour)}" stroke-width="1.6"/>')
    if len(series) > 1:
        body += _legend(chart, series)
    return _svg(chart, body + _markers(frame, markers))


def bar_chart(chart: Chart, bars: Sequence[tuple[str, float | None]], colour: str = "#3b6fb6") -> str:
    """One bar per named category (e.g. a weight format); a bar that was not measured is left out, its name kept."""
    measured = [v for _, v in bars if v is not None and math.isfinite(v)]
    if not measured:
        raise ValueError("a bar chart needs at least one measured bar; show a note instead")
    y_ticks, y_step = ticks(0, max(max(measured), 1e-9))
    frame = _Frame(chart, 0.0, float(len(bars)), y_ticks[-1])
    body = _axes(frame, [], 1.0, _labelled(y_ticks, y_step))
    slot = frame.x(1.0) - frame.x(0.0)
    bottom = chart.height - BOTTOM
    for i, (name, value) in enumerate(bars):
        centre = frame.x(i + 0.5)
        body.append(_text(centre, bottom + 16, name))
        if value is None or not math.isfinite(value):
            continue
        top = frame.y(value)
        body.append(
            f'<rect x="{_num(centre - slot * 0.35)}" y="{_num(top)}" width="{_num(slot * 0.7)}" '
            f'height="{_num(bottom - top)}" fill="{escape(colour)}"><title>{escape(name)}: '
            f"{escape(tick_text(value, y_step / 10))}</title></rect>"
        )
    return _svg(chart, body)


# Where a dot's name may go, in order of preference: (dx, dy of the baseline, text-anchor).
LABEL_SPOTS = ((6, -6, "start"), (6, 14, "start"), (-6, -6, "end"), (-6, 14, "end"), (7, 4, "start"), (-7, 4, "end"))


def _overlap(a: Box, b: Box) -> float:
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _label_box(x: float, y: float, text: str, anchor: str) -> Box:
    width = LABEL_CHAR_PX * len(text)
    left = x if anchor == "start" else x - width
    return (left, y - 9, left + width, y + 2)


def _place_labels(frame: _Frame, named: Sequence[tuple[float, float, str]], taken: list[Box]) -> list[str]:
    """Each dot's name at the first spot of `LABEL_SPOTS` that covers the least of the names placed before
    it, the dots and the legend (`taken`) and of the space outside the plot area; close settings (two
    formats of one size) then keep readable names. Names are placed in the order given."""
    area = (LEFT, TOP, frame.chart.width - RIGHT, frame.chart.height - BOTTOM)
    out = []
    for px, py, text in named:

        def cost(spot: tuple[int, int, str], px: float = px, py: float = py, text: str = text) -> float:
            box = _label_box(px + spot[0], py + spot[1], text, spot[2])
            outside = (box[2] - box[0]) * (box[3] - box[1]) - _overlap(box, area)
            return sum(_overlap(box, t) for t in taken) + outside

        dx, dy, anchor = min(LABEL_SPOTS, key=cost)  # the first of equal cost: the order is a preference
        taken.append(_label_box(px + dx, py + dy, text, anchor))
        out.append(_text(px + dx, py + dy, text, anchor=anchor))
    return out


def scatter_chart(
    chart: Chart,
    dots: Sequence[Dot],
    legend: tuple[str, str] = ("highlighted", "other"),
    symlog_y: float | None = None,
    colour: str = "#3b6fb6",
    highlight_colour: str = "#d9822b",
) -> str:
    """Labelled dots over x from 0 (or below) and y from 0 up; the highlighted dots are joined in order of x by
    a dashed line in the second colour (a Pareto front), and `legend` names (highlighted, other).

    `symlog_y` (a constant) draws y on a symlog axis, for figures that span orders of magnitude; a negative
    y (not a KL, a hand-edited file) has no place on it, so the axis is linear then. Each dot's <title> says
    its name, its figures and, when highlighted, the legend's first name.
    """
    dots = sorted((d for d in dots if math.isfinite(d.x) and math.isfinite(d.y)), key=lambda d: d.highlight)
    if not dots:
        raise ValueError("a scatter chart needs at least one measured point; show a note instead")
    xs, ys = [d.x for d in dots], [d.y for d in dots]
    x_ticks, x_step = ticks(min(0.0, *xs), max(max(xs), 1e-9), 6)
    y_lo = min(0.0, *ys)
    if symlog_y is not None and symlog_y > 0 and y_lo >= 0:
        y_values = symlog_ticks(max(ys), symlog_y)
        y_ticks = [(v, tick_text(v, v) if v else "0") for v in y_values]
        frame = _Frame(chart, x_ticks[0], x_ticks[-1], y_values[-1], symlog=symlog_y)
    else:
        values, y_step = ticks(y_lo, max(max(ys), 1e-9))
        y_ticks = _labelled(values, y_step)
        frame = _Frame(chart, x_ticks[0], x_ticks[-1], values[-1], y0=values[0])
    body = _axes(frame, x_ticks, x_step, y_ticks)
    at = [(frame.x(d.x), frame.y(d.y)) for d in dots]
    front = sorted((p for d, p in zip(dots, at, strict=True) if d.highlight), key=lambda p: (p[0], -p[1]))
    if len(front) > 1:
        path = " ".join(f"{'M' if i == 0 else 'L'}{_num(x)} {_num(y)}" for i, (x, y) in enumerate(front))
        body.append(
            f'<path d="{path}" fill="none" stroke="{escape(highlight_colour)}" stroke-width="1.4" '
            'stroke-dasharray="4 3"/>'
        )
    for d, (px, py) in zip(dots, at, strict=True):  # sorted above: the highlighted ones on top
        fill = highlight_colour if d.highlight else colour
        tip = f"{d.label}: x {d.x:.4g}, y {d.y:.4g}" + (f" ({legend[0]})" if d.highlight else "")
        body.append(
            f'<circle cx="{_num(px)}" cy="{_num(py)}" r="{5 if d.highlight else 4}" fill="{escape(fill)}" '
            f'stroke="#fff"><title>{escape(tip)}</title></circle>'
        )
    keys = [Series(legend[0], (), highlight_colour), Series(legend[1], (), colour)]
    left = _crowded_right(chart, at, keys)
    taken = [_legend_box(chart, keys, left)] + [(x - 5, y - 5, x + 5, y + 5) for x, y in at]
    named = [(x, y, d.label) for d, (x, y) in zip(dots, at, strict=True)][::-1]  # the front's names first
    return _svg(chart, body + _place_labels(frame, named, taken) + _legend(chart, keys, left=left))


def _crowded_right(chart: Chart, at: Sequence[tuple[float, float]], keys: Sequence[Series]) -> bool:
    """Whether fewer dots lie under a top-left legend than under a top-right one."""

    def under(box: Box) -> int:
        return sum(box[0] <= x <= box[2] and box[1] <= y <= box[3] for x, y in at)

    return under(_legend_box(chart, keys, True)) < under(_legend_box(chart, keys, False))


def standalone(svg: str) -> str:
    """A chart of this module as an SVG file of its own (for docs): the XML namespace a file needs, and a
    white ground, because the text is drawn dark for the white page of the HTML export."""
    head, sep, rest = svg.partition(">")
    if not head.startswith("<svg ") or not sep:
        raise ValueError("not a chart drawn by reports.svg_charts")
    ground = '<rect x="0" y="0" width="100%" height="100%" fill="#fff"/>'
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" {head[5:]}>{ground}{rest}\n'
    )
