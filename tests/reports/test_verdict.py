"""The verdict table: one FAIL is NOT_READY, a required ERROR or no evidence is INCOMPLETE, and exit codes."""

from __future__ import annotations

import pytest

from reports.check_result import Category, CheckResult, CheckStatus
from reports.verdict import Verdict, decide, exit_code

P, W, F, S, E = CheckStatus.PASS, CheckStatus.WARN, CheckStatus.FAIL, CheckStatus.SKIP, CheckStatus.ERROR


def _r(status: CheckStatus, required: bool = True) -> CheckResult:
    return CheckResult(
        id=f"t.{status.value}", category=Category.SECURITY, title="t", status=status, message="m", required=required
    )


@pytest.mark.parametrize(
    ("statuses", "verdict"),
    [
        ([P], Verdict.READY),
        ([P, S, S], Verdict.READY),
        ([P, W], Verdict.READY_WITH_WARNINGS),
        ([P, W, F], Verdict.NOT_READY),
        ([P, F, E], Verdict.NOT_READY),  # a failure is evidence; the missing line does not soften it
        ([P, E], Verdict.INCOMPLETE),
        ([P, W, E], Verdict.INCOMPLETE),
        ([S, S], Verdict.INCOMPLETE),  # nothing measured is never READY
        ([], Verdict.INCOMPLETE),
    ],
)
def test_decide(statuses: list[CheckStatus], verdict: Verdict) -> None:
    assert decide([_r(s) for s in statuses]) == verdict


def test_an_optional_error_only_warns() -> None:
    assert decide([_r(P), _r(E, required=False)]) == Verdict.READY_WITH_WARNINGS


@pytest.mark.parametrize(
    ("verdict", "code"),
    [(Verdict.READY, 0), (Verdict.READY_WITH_WARNINGS, 0), (Verdict.NOT_READY, 1), (Verdict.INCOMPLETE, 2)],
)
def test_exit_codes(verdict: Verdict, code: int) -> None:
    assert exit_code(verdict) == code
