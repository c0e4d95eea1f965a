"""A comparison as Markdown: what `reports compare` prints and writes with --markdown.

Each metric row says in words whether the difference is real, so a reader who skips
the interval column still reads the right conclusion.
"""

from __future__ import annotations

from reports.compare import Comparison, MetricDelta
from reports.markdown import cell, figure


def meaning(m: MetricDelta) -> str:
    """What a metric's change means, in words (the Markdown export and the Reports page both say it)."""
    if m.ci95_pct is None:
        return "not measurable"
    if not m.enough_samples:
        return "too few requests to judge this percentile"
    if not m.changed:
        return "no significant change"
    better = (m.delta_pct or 0) > 0 if m.higher_is_better else (m.delta_pct or 0) < 0
    return "**regression**" if m.regression else ("changed: better" if better else "changed: worse (within threshold)")


def _row(m: MetricDelta) -> str:
    ci = "-" if m.ci95_pct is None else f"{m.ci95_pct[0]:+.1f}% .. {m.ci95_pct[1]:+.1f}%"
    delta = "-" if m.delta_pct is None else f"{m.delta_pct:+.1f}%"
    return (
        f"| {cell(m.name)} | {figure(m.a, m.unit)} | {figure(m.b, m.unit)} | {delta} | {ci} "
        f"| {m.n[0]} / {m.n[1]} | {meaning(m)} |"
    )


def comparison_to_markdown(c: Comparison) -> str:
    def name(ref_label: str | None, ref_id: str) -> str:
        return f"`{ref_id}`" + (f" ({cell(ref_label)})" if ref_label else "")

    lines = [
        "# Preflight comparison",
        "",
        f"- A: {name(c.a_doc.label, c.a_doc.id)}, {c.a_doc.kind}, {c.a_doc.started_at}",
        f"- B: {name(c.b_doc.label, c.b_doc.id)}, {c.b_doc.kind}, {c.b_doc.started_at}",
        f"- Comparable: {'yes' if c.comparable else 'NO'}; regression threshold {c.threshold_pct:g}%",
    ]
    lines += [f"  - {cell(r)}" for r in c.reasons]
    if c.verdict is not None:
        lines.append(f"- Verdict: {c.verdict.a} -> {c.verdict.b}")
    if c.metrics:
        lines += [
            "",
            "## Metrics (bootstrap 95% interval of the change, from the raw records)",
            "",
            "| Metric | A | B | Change | 95% interval | n (A / B) | Meaning |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [_row(m) for m in c.metrics]
    if c.checks:
        lines += ["", "## Checks that changed", "", "| Check | A | B |", "|---|---|---|"]
        lines += [f"| `{x.id}` | {x.a.value if x.a else 'new'} | {x.b.value if x.b else 'gone'} |" for x in c.checks]
    if c.environment:
        lines += ["", "## Environment differences", "", "| What | A | B |", "|---|---|---|"]
        lines += [f"| {cell(e.name)} | {cell(e.a or '-')} | {cell(e.b or '-')} |" for e in c.environment]
    regressions = c.regressions()
    lines += ["", f"Regressions: {', '.join(regressions)}" if regressions else "Regressions: none"]
    return "\n".join(lines) + "\n"
