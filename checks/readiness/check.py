"""A readiness check: what it is (`Check`), what it gets (`CheckContext`), and how it reports.

Every check is an async function `run(ctx, check) -> CheckResult`. It builds its
result through `check.result(...)` so id, category, title, reference and remediation
are written once, on the `Check`. The checklist runner (checks/readiness/runner.py)
turns anything a check raises into ERROR, never PASS, so a check only has to say what
it measured; it never has to guard against its own bugs or a dying target.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checks.load.endpoint import Endpoint
from checks.load.targets import BundledTarget
from reports.benchmark_result import BenchmarkResult
from reports.check_result import Category, CheckResult, CheckStatus, Exposure, Scalar
from reports.slo_profile import SloProfile

CheckFn = Callable[["CheckContext", "Check"], Awaitable[CheckResult]]


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the checklist: its identity and the function that measures it."""

    id: str
    category: Category
    title: str
    run: CheckFn = field(repr=False)
    reference: str | None = None
    remediation: str | None = None
    required: bool = True

    def result(
        self,
        status: CheckStatus,
        message: str,
        *,
        value: Scalar | None = None,
        threshold: Scalar | None = None,
        unit: str | None = None,
        evidence: Sequence[str] = (),
        remediation: str | None = None,
    ) -> CheckResult:
        """This check's result; remediation defaults to the check's own and is dropped on PASS and SKIP."""
        fix = remediation or self.remediation
        return CheckResult(
            id=self.id,
            category=self.category,
            title=self.title,
            status=status,
            value=value,
            threshold=threshold,
            unit=unit,
            evidence=list(evidence),
            message=message,
            remediation=None if status in (CheckStatus.PASS, CheckStatus.SKIP) else fix,
            reference=self.reference,
            required=self.required,
        )

    def skip(self, why: str, evidence: Sequence[str] = ()) -> CheckResult:
        """Does not apply here; `why` says so."""
        return self.result(CheckStatus.SKIP, why, evidence=evidence)

    def error(self, why: str, evidence: Sequence[str] = ()) -> CheckResult:
        """Tried to measure and could not: the verdict cannot rest on this line."""
        return self.result(CheckStatus.ERROR, why, evidence=evidence)


@dataclass(slots=True, kw_only=True)
class Declared:
    """What the operator says the deployment should do; checks hold the target to it. None: not declared."""

    rate_limit_rpm: int | None = None  # a burst above this must get 429
    max_queue: int | None = None  # waiting requests before the server sheds load
    concurrency: int | None = None  # streams the deployment must hold at once
    context_tokens: int | None = None  # tokens per stream (prompt + output)
    target_qps: float | None = None  # requests per second the deployment must sustain within the SLO
    server_log: Path | None = None  # a server log to search for prompts
    server_pid: int | None = None  # a local server's process, for RSS growth


@dataclass(slots=True)
class CheckContext:
    """Everything a check may look at. Filled by the checklist runner; checks only read it.

    `endpoint` carries the base URL, model, API kind and key (never print it: evidence
    strings go into reports). `benchmark` is the load run's result when one ran or was
    handed over with --from. `bundled` is the started bundled server (a
    `checks.load.targets.BundledTarget`) or None for a remote target. `scratch` lets one
    check leave a measurement for a later one (e.g. the metrics timeline).
    """

    endpoint: Endpoint
    exposure: Exposure
    slo: SloProfile
    declared: Declared = field(default_factory=Declared)
    benchmark: BenchmarkResult | None = None
    bundled: BundledTarget | None = None
    plan: dict[str, Any] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    scratch: dict[str, Any] = field(default_factory=dict)

    @property
    def server_pid(self) -> int | None:
        """The server's process when we can see it: the bundled child, or --server-pid for a local one."""
        if self.bundled is not None and self.bundled.proc is not None:
            return self.bundled.proc.pid
        return self.declared.server_pid

    def open_door(self) -> CheckStatus:
        """The status of a finding that matters by exposure: WARN on a local machine, FAIL beyond it."""
        return CheckStatus.WARN if self.exposure == Exposure.LOCAL else CheckStatus.FAIL
