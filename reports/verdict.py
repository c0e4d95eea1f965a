"""The one verdict a checklist gives, and the exit code a pipeline gates on.

Order of precedence: a FAIL is evidence the deployment is not ready, so it wins over
a missing measurement; a required check that could not measure (ERROR) leaves the
answer open; so does a checklist in which nothing at all was measured (every line
SKIP): "READY" must never rest on no evidence.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from reports.check_result import CheckResult, CheckStatus


class Verdict(StrEnum):
    READY = "READY"
    READY_WITH_WARNINGS = "READY_WITH_WARNINGS"
    NOT_READY = "NOT_READY"
    INCOMPLETE = "INCOMPLETE"


EXIT_CODES: dict[Verdict, int] = {
    Verdict.READY: 0,
    Verdict.READY_WITH_WARNINGS: 0,
    Verdict.NOT_READY: 1,
    Verdict.INCOMPLETE: 2,
}


def decide(results: Iterable[CheckResult]) -> Verdict:
    """READY: all PASS or SKIP (at least one PASS); WARNINGS: some WARN or an optional ERROR; NOT_READY: any FAIL;
    INCOMPLETE: a required ERROR, or nothing measured."""
    results = list(results)
    statuses = {r.status for r in results}
    if CheckStatus.FAIL in statuses:
        return Verdict.NOT_READY
    if any(r.status == CheckStatus.ERROR and r.required for r in results):
        return Verdict.INCOMPLETE
    if not statuses - {CheckStatus.SKIP}:
        return Verdict.INCOMPLETE
    if statuses & {CheckStatus.WARN, CheckStatus.ERROR}:
        return Verdict.READY_WITH_WARNINGS
    return Verdict.READY


def exit_code(verdict: Verdict) -> int:
    """0 READY or READY_WITH_WARNINGS, 1 NOT_READY, 2 INCOMPLETE."""
    return EXIT_CODES[verdict]
