"""`ReadinessReport`: everything a readiness run found, as one versioned document.

It holds the evidence, not only the verdict: the environment, the target (secrets
redacted), the SLO profile and exposure used, the plan when one was handed over, the
whole benchmark result with every per-request record, the metrics scraped from the
target during the load, and every check's result. Any figure in it can be checked
again from what it keeps.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from reports import store
from reports.benchmark_result import BenchmarkResult
from reports.check_result import Category, CheckResult, CheckStatus, Exposure
from reports.identity import DocumentId, Label, add_identity, new_document_id
from reports.metrics_timeline import MetricsTimeline
from reports.redaction import redact_url
from reports.slo_profile import SloProfile
from reports.verdict import Verdict

MEASURED_HERE = "measured by this run"  # benchmark_source when the checklist ran the load itself


class ToolInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "preflight"
    version: str


class TargetInfo(BaseModel):
    """The endpoint that was judged. No key, no userinfo, no query string: only whether a key was used."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["bundled", "remote"]
    base_url: str
    model: str | None
    api: Literal["chat", "completions"]
    api_key_set: bool
    quant: str | None = Field(None, description="bundled target: weight format")
    weights_dir: str | None = Field(
        None, description="bundled target: the weights directory it served (`python -m engine compress`), if any"
    )
    server_log: str | None = Field(None, description="bundled target: where its log was kept")

    @field_validator("base_url")
    @classmethod
    def _redact(cls, url: str) -> str:
        return redact_url(url)

    @property
    def weight_format(self) -> str | None:
        """The weight format as the exports show it, with the directory it came from where one was served."""
        return f"{self.quant} from {self.weights_dir}" if self.quant and self.weights_dir else self.quant


class DeclaredInfo(BaseModel):
    """What the operator declared the deployment must do (the limits some checks hold it to)."""

    model_config = ConfigDict(extra="forbid")

    rate_limit_rpm: int | None = None
    max_queue: int | None = None
    concurrency: int | None = None
    context_tokens: int | None = None
    target_qps: float | None = None
    server_log: str | None = None
    server_pid: int | None = None


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Identity for the report and for the benchmark result it carries (a v1 report holds a v1 result)."""
    bench = data.get("benchmark")
    if isinstance(bench, dict) and bench.get("schema_version") == 1:
        data = {**data, "benchmark": store.migrate(bench, BenchmarkResult, "its benchmark")}
    return add_identity(data)


class ReadinessReport(BaseModel):
    """One readiness run (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    KIND: ClassVar[str] = "preflight.readiness-report"
    SCHEMA_VERSION: ClassVar[int] = 2
    MIGRATIONS: ClassVar[dict[int, store.Migration]] = {1: _v1_to_v2}

    kind: Literal["preflight.readiness-report"] = "preflight.readiness-report"
    schema_version: int = 2
    id: DocumentId = Field(default_factory=new_document_id, description="names this report in the history")
    label: Label | None = Field(None, description="the user's name for this run, e.g. 'rc2 on the staging pool'")
    tool: ToolInfo
    started_at: datetime
    finished_at: datetime
    environment: dict[str, Any] = Field(description="the machine Preflight ran on (planner.hardware.detect())")
    target: TargetInfo
    slo: SloProfile
    exposure: Exposure
    declared: DeclaredInfo = Field(default_factory=DeclaredInfo)
    categories: list[Category] = Field(description="the categories that were checked (--only)")
    plan: dict[str, Any] | None = Field(None, description="the planner's plan, when one was handed over")
    benchmark: BenchmarkResult | None = None
    benchmark_source: str | None = Field(None, description="'measured by this run' or the --from file")
    metrics_timeline: MetricsTimeline | None = None
    checks: list[CheckResult]
    verdict: Verdict
    notes: list[str] = Field(default_factory=list, description="what the reader should know about this run")

    def status_counts(self) -> dict[CheckStatus, int]:
        """How many checks ended in each status, every status listed, in CheckStatus order."""
        out = dict.fromkeys(CheckStatus, 0)
        for r in self.checks:
            out[r.status] += 1
        return out
