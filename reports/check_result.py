"""One line of the readiness checklist: `CheckResult`, its status and its category.

A check that could not measure is ERROR (it tried and failed) or SKIP (it does not
apply, and says why); it is never PASS (DESIGN.md, fail closed). `evidence` holds what
was sent and what came back, short enough to paste into a launch review.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class CheckStatus(StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"
    ERROR = "ERROR"


class Category(StrEnum):
    """The checklist's sections, in the order a report shows them."""

    PERFORMANCE = "performance"
    RESOURCES = "resources"
    SECURITY = "security"
    MONITORING = "monitoring"
    RELIABILITY = "reliability"


class Exposure(StrEnum):
    """Who can reach the endpoint. It decides whether an open door is a WARN or a FAIL."""

    LOCAL = "local"
    INTERNAL = "internal"
    PUBLIC = "public"


Scalar = float | int | str | bool


class CheckResult(BaseModel):
    """The outcome of one check, with the figure it measured and the limit it was held to."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="stable dotted id, e.g. 'security.auth.no_key'")
    category: Category
    title: str = Field(description="what is checked, as a short sentence")
    status: CheckStatus
    value: Scalar | None = Field(None, description="what was measured; None when nothing was")
    threshold: Scalar | None = Field(None, description="the limit the value was held to")
    unit: str | None = Field(None, description="unit of value and threshold, e.g. 'ms', 'tok/s', '%'")
    evidence: list[str] = Field(default_factory=list, description="requests sent and answers seen, briefly")
    message: str = Field(description="the finding in one sentence")
    remediation: str | None = Field(None, description="what to change when the status is not PASS")
    reference: str | None = Field(None, description="the standard behind the check (OWASP LLM 2025 id, SLO profile)")
    required: bool = Field(True, description="an ERROR here makes the verdict INCOMPLETE")
    duration_s: float | None = Field(None, description="how long the check took")
