"""`BenchmarkResult`: the saved document of one benchmark, with every per-request record.

`checks.load.benchmark.run_benchmark` fills it; the CLI prints and saves it, the
Benchmark page draws it, and a later Preflight loads it back. It holds the run
conditions (config with secrets left out, target, endpoint, workload, SLO, the client
machine), one `RunDoc` per run (one for a profile, several for a sweep) with its
summary, client self-check and raw records, and the resource timeline, so any figure
can be recomputed from the file (STYLE.md §6).

Every model rejects unknown fields, and every URL passes `redact_url` on the way in,
whether it comes from a live run or from a file, so no user:key@ or ?key= ever
reaches disk. Files from before typed documents carry `"schema":
"preflight.benchmark/1"` instead of `kind`/`schema_version`; `load_benchmark_result`
upgrades them with `upgrade_legacy_benchmark`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from reports import store
from reports.identity import DocumentId, Label, add_identity, new_document_id
from reports.metrics_timeline import MetricsFollowUp, MetricsTimeline
from reports.network import NetworkDoc
from reports.records import RequestRecord
from reports.redaction import redact_url
from reports.resources import ResourceSample, ResourceSummary
from reports.summary import BenchmarkSummary

LEGACY_SCHEMA = "preflight.benchmark/1"  # what files written before typed documents name themselves

RedactedUrl = Annotated[str, AfterValidator(redact_url)]


class _Part(BaseModel):
    """Base of every part of the document: an unknown field is an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class ToolDoc(_Part):
    name: str = "preflight"
    version: str


class SelfCheckDoc(_Part):
    """Whether the load generator kept up; lag figures in ms, None when not measured."""

    valid: bool
    reasons: list[str] = Field(default_factory=list)
    schedule_lag_p99_ms: float | None = None
    schedule_lag_max_ms: float | None = None
    loop_lag_p99_ms: float | None = None
    loop_lag_max_ms: float | None = None


class WorkerDoc(_Part):
    """One load-generator process of a run split over Ray workers, and how its clock was put on the driver's."""

    worker: int = Field(description="1-based")
    clock_offset_ms: float = Field(description="the worker's clock minus the driver's, from the fastest probe")
    clock_round_trip_ms: float = Field(description="that probe's round trip: the offset is good to half of it")
    records: int = Field(description="records it returned (all it took, for a worker that died)")
    died: str | None = Field(None, description="why it stopped answering, if it did")


class RunDoc(_Part):
    """One run of a load profile: what it measured and every request it sent (warm-up included, marked)."""

    profile: str = Field(description="the load profile's label, e.g. 'concurrency:4' or 'poisson:2.5'")
    summary: BenchmarkSummary
    self_check: SelfCheckDoc
    stopped_early: str | None = Field(None, description="why the run ended before its bound, if it did")
    cancelled: bool = False
    wall_s: float
    meets_slo: bool | None = Field(None, description="sweep steps with an SLO only")
    why_not: str | None = Field(None, description="sweep steps: the first reason the SLO was missed")
    workers: list[WorkerDoc] = Field(default_factory=list, description="--workers runs: each load generator")
    records: list[RequestRecord]


class SweepDoc(_Part):
    max_rate_meeting_slo: float | None = Field(description="req/s of the best step that met the SLO")
    stopped: str | None = Field(description="why the ladder ended early, else None")
    attainment: float = Field(description="share of a step's requests that had to meet the SLO")


class ResourcesDoc(_Part):
    summary: ResourceSummary
    samples: list[ResourceSample]
    gpu_note: str | None = Field(None, description="why there are no GPU readings, when there are none")


class BundledTargetDoc(_Part):
    kind: Literal["bundled"] = "bundled"
    quant: str
    weights_dir: str | None = Field(None, description="the compressed weights directory served (--weights), if any")
    device: str
    threads: int | None
    max_num_seqs: int
    api: Literal["chat", "completions"]
    log_path: str
    decode: Literal["compiled", "eager"] | None = Field(
        None, description="how the server decoded, from its /health (None: not recorded, results before decode was)"
    )
    eager_reason: str | None = Field(
        None,
        description="why the server ran eager although compiled decode is its default (no compiler, a failed build)",
    )


class RemoteTargetDoc(_Part):
    kind: Literal["remote"] = "remote"
    base_url: RedactedUrl
    model: str | None
    api: Literal["chat", "completions"]
    api_key_set: bool


TargetDoc = Annotated[BundledTargetDoc | RemoteTargetDoc, Field(discriminator="kind")]


class EndpointDoc(_Part):
    """The server the load went to, as probed; never the key, only whether one was set."""

    base_url: RedactedUrl
    model: str
    api: Literal["chat", "completions"]
    api_key_set: bool
    supports_ignore_eos: bool
    supports_stream_usage: bool


class SloDoc(_Part):
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None


class ClientDoc(_Part):
    """The machine the load generator ran on: the client side of every figure."""

    host: str
    cpu_count: int | None
    python: str
    os: str
    load_avg_1m: float
    memory_gib: float


class BenchmarkResult(BaseModel):
    """A whole benchmark: conditions, runs with records, resources. See the module docstring."""

    KIND: ClassVar[str] = "preflight.benchmark-result"
    SCHEMA_VERSION: ClassVar[int] = 2
    MIGRATIONS: ClassVar[dict[int, store.Migration]] = {1: add_identity}
    model_config = ConfigDict(extra="forbid")

    kind: Literal["preflight.benchmark-result"] = "preflight.benchmark-result"
    schema_version: int = 2
    id: DocumentId = Field(default_factory=new_document_id, description="names this result in the history")
    label: Label | None = Field(None, description="the user's name for this run, e.g. 'after the driver update'")
    tool: ToolDoc
    started_at: AwareDatetime
    finished_at: AwareDatetime
    config: dict[str, Any] = Field(description="the BenchmarkConfig as run, without the API key (api_key_set instead)")
    target: TargetDoc
    endpoint: EndpointDoc
    workload: str = Field(description="where the prompts came from, in one line")
    slo: SloDoc | None
    client: ClientDoc
    valid: bool = Field(description="False when the client could not keep up in some run (see self_check)")
    cancelled: bool
    warnings: list[str] = Field(default_factory=list)
    runs: list[RunDoc]
    sweep: SweepDoc | None = None
    resources: ResourcesDoc
    network: NetworkDoc | None = Field(None, description="round trip to the target, probed before and after the runs")
    metrics: MetricsTimeline | None = Field(
        None, description="the target's /metrics scraped about every second during the runs (None: not scraped)"
    )
    metrics_follow_up: MetricsFollowUp | None = Field(
        None, description="after a --cancel-rate load: whether running requests and KV-cache usage fell back"
    )
    server_log_tail: str | None = Field(None, description="end of the bundled server's log")

    @field_validator("config")
    @classmethod
    def _no_secrets_in_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The config is kept as a dict (its type lives in checks); its target may be a URL, so redact it."""
        if "api_key" in config:
            raise ValueError("config must not hold api_key; store api_key_set instead")
        target = config.get("target")
        return {**config, "target": redact_url(target)} if isinstance(target, str) else config


def upgrade_legacy_benchmark(data: Any) -> Any:
    """A result file from before typed documents (`"schema": "preflight.benchmark/1"`) -> schema_version 1.

    The layout was the same apart from the identifier, so only that changes; URLs are
    redacted by the model on validation. Anything else is returned as is, for
    `store.from_data` to judge.
    """
    if not isinstance(data, dict) or data.get("schema") != LEGACY_SCHEMA or "kind" in data:
        return data
    upgraded = {k: v for k, v in data.items() if k != "schema"}
    return {"kind": BenchmarkResult.KIND, "schema_version": 1, **upgraded}


def parse_benchmark_result(text: str | bytes, source: str = "benchmark result") -> BenchmarkResult:
    """A result from JSON text (a download, an upload); DocumentError with one line when it is not one."""
    return store.parse(text, BenchmarkResult, source, upgrade=upgrade_legacy_benchmark)


def load_benchmark_result(path: Path) -> BenchmarkResult:
    """A saved result, legacy files included; DocumentError with one line for a missing, corrupt or foreign file."""
    return store.load(path, BenchmarkResult, upgrade=upgrade_legacy_benchmark)
