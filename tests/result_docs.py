"""Real `BenchmarkResult` documents built from hand-made records, for tests that need no server.

The runs go through the same `run_doc` and `summarize` that `run_benchmark` uses; only
the run conditions (target, endpoint, client) are fixed stand-ins for a remote server.
"""

from __future__ import annotations

from datetime import UTC, datetime

from checks.load.benchmark import BenchmarkConfig, client_conditions, run_doc
from checks.load.loadgen import RunResult, SelfCheck
from checks.load.metrics import summarize
from checks.load.profiles import LoadProfile
from checks.load.resources import summarize_resources
from reports.benchmark_result import (
    BenchmarkResult,
    EndpointDoc,
    RemoteTargetDoc,
    ResourcesDoc,
    RunDoc,
    SloDoc,
    SweepDoc,
    ToolDoc,
)
from reports.records import RequestRecord, TokenSource
from reports.resources import ResourceSample
from reports.summary import BenchmarkSummary
from reports.version import __version__

BASE_URL = "http://127.0.0.1:8000/v1"


def record(rid: int, send: float, chunks: list[float], warmup: bool = False) -> RequestRecord:
    """A successful streamed request: one token per chunk, ending on its last chunk."""
    return RequestRecord(
        request_id=rid,
        scheduled_s=None,
        ready_s=send,
        send_s=send,
        first_token_s=chunks[0],
        chunk_times_s=chunks,
        chunk_tokens=[1] * len(chunks),
        end_s=chunks[-1],
        input_tokens=8,
        output_tokens=len(chunks),
        token_source=TokenSource.USAGE,
        ok=True,
        http_status=200,
        error_kind=None,
        error_excerpt=None,
        warmup=warmup,
    )


def run_of(
    records: list[RequestRecord], profile: str = "concurrency:2", summary: BenchmarkSummary | None = None
) -> RunDoc:
    """One run's document; the summary is computed from the records unless one is given."""
    wall_s = max((r.end_s or r.send_s for r in records), default=0.0)
    run = RunResult(LoadProfile.parse(profile), records, wall_s, SelfCheck())
    return run_doc(run, summary if summary is not None else summarize(records))


def result_of(
    runs: list[RunDoc],
    sweep: SweepDoc | None = None,
    slo: SloDoc | None = None,
    samples: list[ResourceSample] | None = None,
) -> BenchmarkResult:
    """A whole result around `runs`, as a run against a remote server at BASE_URL would leave it."""
    now = datetime.now(UTC).replace(microsecond=0)
    return BenchmarkResult(
        tool=ToolDoc(version=__version__),
        started_at=now,
        finished_at=now,
        config=BenchmarkConfig(target=BASE_URL).redacted(),
        target=RemoteTargetDoc(base_url=BASE_URL, model="m", api="chat", api_key_set=False),
        endpoint=EndpointDoc(
            base_url=BASE_URL,
            model="m",
            api="chat",
            api_key_set=False,
            supports_ignore_eos=True,
            supports_stream_usage=True,
        ),
        workload="synthetic: 8 in / 3 out tokens (fixed/fixed)",
        slo=slo,
        client=client_conditions(),
        valid=all(run.self_check.valid for run in runs),
        cancelled=False,
        runs=runs,
        sweep=sweep,
        resources=ResourcesDoc(summary=summarize_resources(samples or []), samples=samples or []),
    )
