"""The shipped SLO profiles as the planner's targets: `--slo chat` here is the checklist's `chat`.

One file holds every shipped profile (reports/data/slo_profiles.json, schema
`reports.slo_profile.SloProfile`), and the readiness checklist reads it too, so a profile name
means the same limits from the same source on the Plan page and in the Checklist. This module is
the planner's one reader of it, a shell like `planner/calibrate_cli.py`: it may use `reports`
(tests/test_import_direction.py), and hands the planner's math plain numbers (`SloTargets`).

How a profile becomes targets. The planner predicts one figure per metric, a mean (TTFT of a
prompt at the planned load, TPOT at the planned batch), not a distribution; a profile states
limits at percentiles (`ttft_p95_ms`). Each metric is held to the strictest limit the profile
sets at any percentile, the one a typical request is most likely to break. A mean above a tail
(p95, p99) limit puts the tail above it too (latencies skew upward), so that miss is real; a mean under it does not
show the tail meets it, which is why the plan prints "means, while the targets are TTFT p95 ...",
and why the checklist, which measures the tail, has the last word. A profile's
`min_output_tok_s_per_stream` (a median decode rate) is a median TPOT limit of 1000 / rate ms.

The default is `chat`, the checklist's chat profile (TTFT p95 500 ms, TPOT p99 50 ms, E2E p99
10 s), so a plan and the readiness run that follows it judge the same thing. Comparing a
predicted mean with those limits is the same comparison the planner made before with MLPerf's
p99 limits, so its meaning holds; it is stricter than MLPerf's Llama-3.1-8B server limits (p99
TTFT 2 s, TPOT 100 ms), which stay available as `mlperf-llama3.1-8b-server`. The checklist's
load-scenario profiles (dialogue, search, ...) are built from checks/load/scenarios.py, which
the planner may not import, so the planner offers the shipped file's profiles only.
"""

from __future__ import annotations

from functools import cache

from planner.catalog import lookup
from planner.errors import CatalogError
from planner.workload import SloTargets
from reports.shipped_slo import shipped_file_profiles
from reports.slo_profile import SloProfile

DEFAULT_SLO = "chat"


def _strictest(*limits: tuple[float | None, str]) -> tuple[float | None, str]:
    """The lowest limit given, with the percentile it is stated at; (None, '') when none is."""
    given = [(ms, at) for ms, at in limits if ms is not None]
    return min(given, key=lambda limit: limit[0]) if given else (None, "")


def planner_targets(profile: SloProfile) -> SloTargets:
    """The limits the planner holds its predicted means to: per metric, the strictest the profile sets."""
    rate = profile.min_output_tok_s_per_stream
    ttft = _strictest((profile.ttft_p50_ms, "p50"), (profile.ttft_p95_ms, "p95"), (profile.ttft_p99_ms, "p99"))
    tpot = _strictest(
        (profile.tpot_p50_ms, "p50"), (profile.tpot_p99_ms, "p99"), (1000 / rate if rate else None, "p50")
    )
    e2e = _strictest((profile.e2e_p99_ms, "p99"))
    return SloTargets(
        name=profile.name,
        source=profile.source,
        ttft_ms=ttft[0],
        tpot_ms=tpot[0],
        e2e_ms=e2e[0],
        ttft_at=ttft[1],
        tpot_at=tpot[1],
        e2e_at=e2e[1],
    )


@cache
def slo_choices() -> dict[str, SloTargets]:
    """Every shipped profile the planner offers, by name, in the file's order (the Plan page's list)."""
    try:
        profiles = shipped_file_profiles()
    except ValueError as exc:
        raise CatalogError(str(exc)) from None
    return {name: planner_targets(profile) for name, profile in profiles.items()}


def slo_targets(name: str) -> SloTargets:
    """A shipped profile's targets by name (case and spaces forgiven); UnknownNameError with suggestions."""
    return lookup("SLO profile", name, slo_choices(), lambda targets: ())  # type: ignore[return-value]
