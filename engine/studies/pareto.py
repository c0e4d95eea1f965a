"""The Pareto frontier of measured points: the ones no other point beats on both axes at once.

A point dominates another when it is at least as good on both axes and strictly better on one.
Which direction is better is the caller's (fewer bytes, more tokens per second, less KL). A point
with a figure that was not measured (None) is on no frontier: it cannot be compared.
"""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float | None, float | None]


def _better_or_equal(a: float, b: float, lower: bool) -> bool:
    return a <= b if lower else a >= b


def _strictly_better(a: float, b: float, lower: bool) -> bool:
    return a < b if lower else a > b


def pareto_front(points: Sequence[Point], *, lower_x: bool, lower_y: bool) -> list[bool]:
    """For each (x, y), whether no other point dominates it; `lower_x` / `lower_y`: whether less is better."""
    known = [(i, (float(x), float(y))) for i, (x, y) in enumerate(points) if x is not None and y is not None]
    on_front = [False] * len(points)
    for i, (x, y) in known:
        on_front[i] = not any(
            _better_or_equal(ox, x, lower_x)
            and _better_or_equal(oy, y, lower_y)
            and (_strictly_better(ox, x, lower_x) or _strictly_better(oy, y, lower_y))
            for j, (ox, oy) in known
            if j != i
        )
    return on_front
