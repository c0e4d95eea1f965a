"""`ChecklistConfig`: everything `python -m checks run` and the Checklist page hand the runner.

One pydantic boundary object, as for benchmarks (checks/load/benchmark.py), so the CLI
flags and the page's widgets cannot drift apart: the field descriptions are the help.
The load the checklist runs for its performance lines is a `BenchmarkConfig` built
from these fields plus the SLO profile's per-request limits.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from checks.load.benchmark import BenchmarkConfig
from engine.formats import WEIGHT_FORMATS
from reports.check_result import Category, Exposure

CATEGORY_NAMES = ", ".join(c.value for c in Category)


class ChecklistConfig(BaseModel):
    """A readiness run: which target, judged against what, and how hard to push it."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field("bundled", description=f"'bundled', 'bundled:QUANT' ({', '.join(WEIGHT_FORMATS)}) or a URL")
    api_key: SecretStr | None = Field(None, description="API key of a remote endpoint (never stored in reports)")
    model: str | None = Field(None, description="model name; default: the first one /v1/models lists")
    api: str = Field("chat", description="which OpenAI API to drive: chat or completions")
    slo: str = Field("chat", description="SLO profile: a shipped name or a YAML/JSON profile file")
    exposure: Exposure = Field(Exposure.LOCAL, description="who can reach the endpoint: local, internal or public")
    only: list[Category] | None = Field(None, description=f"check only these categories ({CATEGORY_NAMES})")
    from_path: Path | None = Field(None, description="judge performance from this benchmark result instead of a run")
    plan_path: Path | None = Field(
        None,
        description="a plan from `python -m planner recommend --json`: kept in the report, and the KV check's fallback",
    )
    target_qps: float | None = Field(None, gt=0, description="requests/s the deployment must sustain within the SLO")
    rate_limit_rpm: int | None = Field(None, ge=1, description="declared rate limit: a burst above it must get 429")
    max_queue: int | None = Field(None, ge=1, description="declared queue limit: a burst above it must get 429/503")
    concurrency: int | None = Field(None, ge=1, description="streams the deployment must hold at once (KV check)")
    context_tokens: int | None = Field(None, ge=1, description="tokens per stream for the KV check")
    server_pid: int | None = Field(None, ge=1, description="a local server's PID, for RSS growth")
    server_log: Path | None = Field(None, description="the server's log, searched for prompts")
    profile: str | None = Field(
        None, description="load profile of the measured run (default concurrency:4, sweep with --target-qps)"
    )
    requests: int = Field(40, ge=1, description="measured requests of the run (per sweep step)")
    input_len: int = Field(128, ge=1, description="synthetic prompt tokens")
    output_len: int = Field(64, ge=2, description="synthetic output tokens")
    threads: int | None = Field(None, ge=1, description="bundled target: torch threads of the server")
    eager: bool = Field(False, description="bundled target: serve --eager (skip the compiled decode step)")
    weights: str | None = Field(None, description=BenchmarkConfig.model_fields["weights"].description)

    @field_validator("target")
    @classmethod
    def _target(cls, target: str) -> str:
        """The Benchmark's rule for a target: 'bundled[:QUANT]' or an http(s) URL."""
        BenchmarkConfig.model_construct(target=target).bundled_quant()
        return target

    @model_validator(mode="after")
    def _weights(self) -> ChecklistConfig:
        """The Benchmark's rule for a weights directory: a bundled target serves it, and it is named."""
        BenchmarkConfig.model_construct(target=self.target, weights=self.weights)._check_target()
        return self

    @field_validator("api")
    @classmethod
    def _api(cls, api: str) -> str:
        if api not in ("chat", "completions"):
            raise ValueError(f"api {api!r}: choose chat or completions")
        return api

    @field_validator("only", mode="before")
    @classmethod
    def _only(cls, value: object) -> object:
        """'security,monitoring' from a command line is a list of categories."""
        if isinstance(value, str):
            names = [n.strip() for n in value.split(",") if n.strip()]
            unknown = [n for n in names if n not in {c.value for c in Category}]
            if unknown:
                raise ValueError(
                    f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                    f"choose from {CATEGORY_NAMES}"
                )
            return names
        return value

    def categories(self) -> list[Category]:
        """The categories to check, in report order."""
        chosen = set(self.only or Category)
        return [c for c in Category if c in chosen]


# The Quick check: a newcomer's first minute. The bundled engine in its default format, a small load and
# every category, so it ends in a verdict and a saved report in about a minute on a 2-core machine
# (74 s measured, docs/READINESS.md). Its figures are real; it is small, not simulated.
QUICK_CHECK: dict[str, object] = {
    "target": "bundled:int4",
    "requests": 16,
    "input_len": 64,
    "output_len": 32,
    "profile": "concurrency:2",
}


def quick_check_config(eager: bool = False) -> ChecklistConfig:
    """The Quick check; `eager` skips the compiled decode step (the sidebar's choice for the bundled engine)."""
    return ChecklistConfig(**QUICK_CHECK, eager=eager)  # type: ignore[arg-type]


def quick_check_command(eager: bool = False) -> str:
    """The CLI run the Quick check equals."""
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK_CHECK.items())
    return f"python -m checks run {flags}" + (" --eager" if eager else "")
