"""`SloProfile`: the latency, throughput and reliability limits a deployment is held to.

A profile is data, not code: Preflight ships some (reports/data/slo_profiles.json, read by
the planner and the checklist alike through `reports.shipped_slo`, plus one per load scenario in
the checklist) and an operator can write their own in YAML or JSON. Every
profile names its `source`, because a limit nobody can trace is a limit nobody trusts in a
launch review.

Unlike a saved report, a profile is mostly written by hand, so `kind` and
`schema_version` may be left out of a user file (they default to this version); when
they are present they must be right, so a report handed in by mistake is named as such.

Which percentile each limit is held at is in its name (`ttft_p95_ms`). Goodput, the
share of requests that met every *per-request* limit, uses the tail limits only:
TTFT at p99 (else p95), TPOT at p99, E2E at p99. A p50 limit is about the typical
request; half of all requests may exceed it by definition, so it is never a per-request
limit. See `goodput_limits_ms`.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PositiveNumber = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]

LATENCY_LIMITS: tuple[str, ...] = (
    "ttft_p50_ms",
    "ttft_p95_ms",
    "ttft_p99_ms",
    "tpot_p50_ms",
    "tpot_p99_ms",
    "e2e_p99_ms",
)
DEFAULT_MAX_ERROR_RATE = 0.01


class SloProfile(BaseModel):
    """Named limits with their source. None: the profile sets no limit there, and no check line is made for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    KIND: ClassVar[str] = "preflight.slo-profile"
    SCHEMA_VERSION: ClassVar[int] = 1

    kind: Literal["preflight.slo-profile"] = "preflight.slo-profile"
    schema_version: int = Field(1, description="format version; may be omitted in a hand-written file")
    name: str = Field(
        min_length=1,
        max_length=80,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        description="short id used with --slo, e.g. 'chat'",
    )
    description: str = Field("", description="what kind of deployment the profile is for")
    source: str = Field(min_length=1, description="where each figure comes from (document, version, section)")
    ttft_p50_ms: PositiveNumber | None = Field(None, description="time to first token, median, ms")
    ttft_p95_ms: PositiveNumber | None = Field(None, description="time to first token, p95, ms")
    ttft_p99_ms: PositiveNumber | None = Field(None, description="time to first token, p99, ms")
    tpot_p50_ms: PositiveNumber | None = Field(None, description="time per output token after the first, median, ms")
    tpot_p99_ms: PositiveNumber | None = Field(None, description="time per output token after the first, p99, ms")
    e2e_p99_ms: PositiveNumber | None = Field(None, description="end-to-end latency, p99, ms")
    min_output_tok_s_per_stream: PositiveNumber | None = Field(
        None, description="median over requests of one stream's decode rate, (output tokens - 1) / (E2E - TTFT)"
    )
    max_error_rate: Fraction = Field(
        DEFAULT_MAX_ERROR_RATE,
        description="failed / measured requests. 1% by default: the 99% success floor most API SLAs start from; "
        "with fewer than 100 requests it allows no failure at all",
    )
    min_goodput_fraction: Fraction | None = Field(
        None, description="share of measured requests (failures included) that met every per-request limit"
    )

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if not 1 <= v <= cls.SCHEMA_VERSION:
            raise ValueError(f"schema_version {v} is not one this Preflight reads (1..{cls.SCHEMA_VERSION})")
        return v

    @field_validator("source", "name")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()

    @field_validator("min_goodput_fraction")
    @classmethod
    def _goodput_above_zero(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("a minimum goodput of 0 checks nothing: set a share above 0 (e.g. 0.95) or leave it out")
        return v

    @model_validator(mode="after")
    def _at_least_one_limit(self) -> SloProfile:
        limits = (*LATENCY_LIMITS, "min_output_tok_s_per_stream", "min_goodput_fraction")
        if all(getattr(self, name) is None for name in limits):
            raise ValueError(f"profile {self.name!r} sets no limit: give at least one of {', '.join(limits)}")
        if self.min_goodput_fraction is not None and not self.goodput_limits_ms():
            raise ValueError(
                "min_goodput_fraction needs a per-request limit (ttft_p95_ms, ttft_p99_ms, tpot_p99_ms or e2e_p99_ms)"
            )
        return self

    def goodput_limits_ms(self) -> dict[str, float]:
        """The per-request limits goodput counts ('ttft', 'tpot', 'e2e' -> ms): the tail limits, never a median."""
        ttft = self.ttft_p99_ms if self.ttft_p99_ms is not None else self.ttft_p95_ms
        limits = {"ttft": ttft, "tpot": self.tpot_p99_ms, "e2e": self.e2e_p99_ms}
        return {metric: ms for metric, ms in limits.items() if ms is not None}
