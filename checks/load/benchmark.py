"""One benchmark, end to end: target -> workload -> load profile -> records -> summary -> result JSON.

`BenchmarkConfig` is the boundary object the CLI and the Benchmark page both fill
(pydantic, unknown fields rejected). `run_benchmark()` starts or probes the target,
builds the workload, runs the profile (or the sweep ladder) while a resource monitor
samples the host and the bundled server, and returns a `BenchmarkResult` (the typed
document in reports/benchmark_result.py) holding the config with secrets redacted, the
summary, the client self-check, the resource timeline and every per-request record,
so any figure can be recomputed.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psutil
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from checks.load.client import RequestOptions
from checks.load.datasets import load_dataset, load_sharegpt_conversations
from checks.load.distributed import check_split, run_distributed
from checks.load.endpoint import READ_TIMEOUT_S, Endpoint, check_target_url
from checks.load.loadgen import ProgressCallback, RunLimits, RunResult, Sessions, run_load
from checks.load.metrics import Slo, summarize
from checks.load.network import probe_rtt_sync
from checks.load.profiles import PROFILE_HELP, LoadProfile
from checks.load.prompts import PromptRequest
from checks.load.resources import ResourceMonitor, summarize_resources
from checks.load.scenarios import SCENARIOS, scenario_requests
from checks.load.sse import MAX_EVENT_BYTES, MAX_RESPONSE_BYTES
from checks.load.sweep import SweepOptions, SweepResult, run_sweep
from checks.load.targets import BundledOptions, BundledTarget, RemoteTarget, TargetError
from checks.load.tokenizer import TextTokenizer, bundled_tokenizer
from checks.load.traces import DEFAULT_BLOCK_TOKENS, load_trace, trace_requests
from checks.load.workloads import SyntheticSpec, synthetic_conversations, synthetic_requests
from checks.readiness.metrics_scrape import FOLLOW_UP_DEADLINE_S, MetricsScraper, follow_up
from engine.formats import WEIGHT_FORMATS
from reports.benchmark_result import (
    BenchmarkResult,
    ClientDoc,
    ResourcesDoc,
    RunDoc,
    SelfCheckDoc,
    SloDoc,
    SweepDoc,
    ToolDoc,
)
from reports.network import NetworkDoc
from reports.redaction import redact_url
from reports.summary import BenchmarkSummary
from reports.validation import first_problem
from reports.version import __version__

Distribution = Literal["fixed", "uniform", "normal"]


class BenchmarkConfig(BaseModel):
    """Everything a benchmark run needs; the field descriptions drive the CLI help and page tooltips."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field("bundled", description=f"'bundled', 'bundled:QUANT' ({', '.join(WEIGHT_FORMATS)}) or a URL")
    api_key: SecretStr | None = Field(None, description="API key of a remote endpoint (never stored in results)")
    model: str | None = Field(None, description="model name; default: the first one /v1/models lists")
    api: Literal["chat", "completions"] = Field("chat", description="which OpenAI API to drive")
    profile: str = Field("concurrency:4", description=PROFILE_HELP)
    max_concurrency: int | None = Field(None, ge=1, description="cap on in-flight requests of a rate profile")
    requests: int | None = Field(50, ge=1, description="measured requests (per sweep step)")
    duration_s: float | None = Field(None, gt=0, description="measured seconds (per sweep step)")
    warmup_requests: int = Field(2, ge=0, description="requests sent first and left out of the figures")
    input_len: int = Field(256, ge=1, description="synthetic prompt tokens")
    output_len: int = Field(128, ge=1, description="synthetic output tokens (max_tokens)")
    input_dist: Distribution = Field("fixed", description="spread of the input lengths")
    output_dist: Distribution = Field("fixed", description="spread of the output lengths")
    range_ratio: float = Field(0.0, ge=0, le=1, description="width of a uniform/normal length spread")
    shared_prefix_len: int = Field(0, ge=0, description="tokens every synthetic prompt shares (prefix cache test)")
    dataset: str | None = Field(None, description="JSONL or ShareGPT JSON prompt file instead of synthetic prompts")
    scenario: str | None = Field(None, description=f"built-in scenario: {', '.join(SCENARIOS)}")
    trace: str | None = Field(
        None, description="replay a recorded trace (Azure LLM inference CSV or Mooncake JSONL): its times and lengths"
    )
    trace_speed: float = Field(1.0, gt=0, allow_inf_nan=False, description="replay the trace this many times faster")
    trace_window_s: float | None = Field(None, gt=0, description="replay only this many seconds of the trace")
    trace_sample: float = Field(
        1.0,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="keep each trace row with this probability, seeded by --seed (0.05: about 1 in 20, at the "
        "recorded times; after the window, before the speed)",
    )
    trace_block_tokens: int = Field(
        DEFAULT_BLOCK_TOKENS, ge=1, description="tokens per hash id of a Mooncake trace (shared prefix blocks)"
    )
    slo_ttft_ms: float | None = Field(None, gt=0, description="TTFT limit for goodput")
    slo_tpot_ms: float | None = Field(None, gt=0, description="TPOT limit for goodput")
    slo_e2e_ms: float | None = Field(None, gt=0, description="end-to-end latency limit for goodput")
    temperature: float | None = Field(None, ge=0, description="sampling temperature sent with every request")
    turns: int = Field(
        1, ge=1, le=256, description="turns per conversation, each sending the whole history (multi-turn sessions)"
    )
    think_time_ms: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="multi-turn: a user's pause between an answer and the next turn"
    )
    workers: int = Field(
        1, ge=1, le=256, description="load-generator processes on Ray sharing the profile (more load than one core)"
    )
    ray_address: str | None = Field(
        None, description="Ray cluster for --workers, e.g. ray://HOST:10001 (default: a local Ray instance)"
    )
    cancel_rate: float = Field(
        0.0, ge=0, le=1, description="share of measured requests the client abandons mid-answer (cancellation load)"
    )
    cancel_after_ms: float = Field(
        500.0, gt=0, allow_inf_nan=False, description="how long after sending an abandoned request is closed"
    )
    seed: int = Field(0, description="seed of the workload and of Poisson arrivals")
    threads: int | None = Field(None, ge=1, description="bundled target: torch threads of the server")
    device: str = Field("cpu", description="bundled target: cpu, cuda or auto")
    max_num_seqs: int = Field(16, ge=1, description="bundled target: sequences batched together")
    eager: bool = Field(
        False,
        description="bundled target: serve --eager (skip the compiled decode step, the default wherever it works: "
        "built once per machine, about a minute)",
    )
    weights: str | None = Field(
        None,
        description="bundled target: serve this directory from `python -m engine compress` (--weights DIR; "
        "the directory's own weight format replaces the target's)",
    )
    step_log: str | None = Field(
        None,
        description="bundled target: the server appends one JSON line per engine step to this file (serve "
        "--step-log): what each forward pass cost, which `python -m planner calibrate --step-log` fits prices to",
    )
    sweep_rates: int = Field(5, ge=1, description="sweep: Poisson rates between sync and saturation")
    sweep_concurrency: int = Field(32, ge=2, description="sweep: concurrency of the saturation step")
    monitor_interval_s: float = Field(0.5, gt=0, description="resource sampling interval")
    scrape_metrics: bool = Field(
        True,
        description="scrape the target's /metrics about every second during the load (running, waiting, KV-cache "
        "usage); after a --cancel-rate load, follow them until they are back where they started",
    )
    cancel_follow_up_s: float = Field(
        FOLLOW_UP_DEADLINE_S,
        gt=0,
        le=600,
        description="after a --cancel-rate load, how long the abandoned requests get to free their slots and KV blocks",
    )
    read_timeout_s: float = Field(
        READ_TIMEOUT_S, gt=0, description="a request fails (timeout) when no byte of its answer comes for this long"
    )
    max_event_bytes: int = Field(
        MAX_EVENT_BYTES, ge=1, description="longest SSE line or event; a longer one fails its request (malformed)"
    )
    max_response_bytes: int = Field(
        MAX_RESPONSE_BYTES, ge=1, description="most bytes one streamed answer may send; more fails it (malformed)"
    )

    @model_validator(mode="after")
    def _check(self) -> BenchmarkConfig:
        if self.requests is None and self.duration_s is None:
            raise ValueError("bound the run: set requests, duration_s, or both")
        if self.dataset is not None and not self.dataset.strip():
            raise ValueError("no prompt file given: choose a JSONL or ShareGPT JSON file")
        if sum(bool(x) for x in (self.dataset, self.scenario, self.trace)) > 1:
            raise ValueError("choose one workload: a dataset, a scenario or a trace")
        if self.trace is not None and not self.trace.strip():
            raise ValueError("no trace file given: choose an Azure CSV or Mooncake JSONL trace")
        if self.trace_sample != 1.0 and not self.trace:
            raise ValueError("a trace sample thins a trace's rows: give the trace file, or leave the sample at 1")
        if self.turns > 1:
            if self.scenario or self.trace:
                raise ValueError("multi-turn sessions come from synthetic prompts or a ShareGPT file, not this")
            if self.api != "chat":
                raise ValueError("multi-turn sessions send the history as chat messages: use the chat API")
            if self.profile.strip() == "sweep":
                raise ValueError("a sweep runs single requests; give multi-turn sessions a concurrency or a rate")
        if self.workers > 1 and self.turns > 1:
            raise ValueError("--workers splits single requests; run multi-turn sessions with one worker")
        if self.ray_address is not None and self.workers == 1:
            raise ValueError("--ray-address places --workers: set workers above 1, or leave the address out")
        if self.turns == 1 and self.think_time_ms:
            raise ValueError("think time is the pause between turns: set turns above 1, or think time to 0")
        if self.trace and "profile" not in self.model_fields_set:
            self.profile = "trace"  # a trace brings its arrival times unless a profile is asked for
        if self.profile.strip() == "trace":
            if not self.trace:
                raise ValueError("the trace profile replays a trace's arrival times: give the trace file")
            return self._check_target()
        if self.scenario and self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; choose one of {', '.join(SCENARIOS)}")
        profile = LoadProfile.parse(self.profile, self.max_concurrency)
        if self.workers > 1:
            check_split(profile, self.workers)
        return self._check_target()

    def _check_target(self) -> BenchmarkConfig:
        quant = self.bundled_quant()  # validates the target form
        if self.weights is not None and quant is None:
            raise ValueError("a weights directory is served by the bundled engine: use a bundled target with it")
        if self.weights is not None and not self.weights.strip():
            raise ValueError("no weights directory given: name one, or leave it out")
        if self.step_log is not None and quant is None:
            raise ValueError("a step log is written by the bundled engine's server: use a bundled target with it")
        if self.step_log is not None and not self.step_log.strip():
            raise ValueError("no step-log file given: name one, or leave it out")
        return self

    def bundled_quant(self) -> str | None:
        """The weight format of a bundled target, None for a URL."""
        if self.target.startswith(("http://", "https://")):
            check_target_url(self.target)
            return None
        name, _, quant = self.target.partition(":")
        if name != "bundled":
            raise ValueError(f"target {self.target!r}: use 'bundled', 'bundled:QUANT' or an http(s):// URL")
        quant = quant or "int4"
        if quant not in WEIGHT_FORMATS:
            raise ValueError(f"bundled weight format {quant!r}: choose one of {', '.join(WEIGHT_FORMATS)}")
        return quant

    def slo(self) -> Slo | None:
        ttft, tpot = self.slo_ttft_ms, self.slo_tpot_ms
        if self.scenario and ttft is None and tpot is None:
            sc = SCENARIOS[self.scenario]
            ttft, tpot = sc.ttft_target_ms, sc.tpot_target_ms
        if ttft is None and tpot is None and self.slo_e2e_ms is None:
            return None
        return Slo(ttft_ms=ttft, tpot_ms=tpot, e2e_ms=self.slo_e2e_ms)

    def redacted(self) -> dict[str, Any]:
        """The config as a result keeps it: no key (only whether one was set), and a target URL without
        userinfo or query string (gateways take keys in both)."""
        data = self.model_dump(mode="json", exclude={"api_key"})
        data["api_key_set"] = self.api_key is not None
        data["target"] = redact_url(self.target)
        return data


def config_error(exc: ValidationError) -> str:
    """The first problem of a rejected BenchmarkConfig as one line: 'field: message', or the message alone."""
    return first_problem(exc)


@dataclass(frozen=True, slots=True)
class Workload:
    """What a run sends and when: the requests (warm-up first), where they came from, and the load profile."""

    requests: list[PromptRequest]
    description: str
    profile: LoadProfile
    sessions: Sessions | None = None  # multi-turn: conversations instead of `requests`


def build_workload(config: BenchmarkConfig, tokenizer: TextTokenizer) -> Workload:
    """The workload's requests, a one-line description of where they came from, and its load profile.

    A trace makes both: its rows are the requests, and (under the `trace`
    profile) its arrival times are the schedule, the warm-up rows left out.
    """
    n = (config.requests or 64) + config.warmup_requests
    profile = None if config.profile.strip() == "trace" else LoadProfile.parse(config.profile, config.max_concurrency)
    if config.trace:
        window = config.trace_window_s
        if config.requests is None and config.duration_s is not None:  # rows past the run's end are never sent
            run_window = config.duration_s * config.trace_speed
            window = run_window if window is None else min(window, run_window)
        trace = load_trace(
            Path(config.trace),
            window_s=window,
            limit=n if config.requests else None,
            block_tokens=config.trace_block_tokens,
            sample=config.trace_sample,
            seed=config.seed,
        )
        requests = trace_requests(trace, tokenizer, seed=config.seed)
        if profile is None:
            profile = trace.profile(config.trace_speed, skip=min(config.warmup_requests, len(requests) - 1))
        return Workload(requests, trace.describe(), profile)
    assert profile is not None  # the config refuses the trace profile without a trace
    if config.turns > 1:
        return _session_workload(config, tokenizer, profile)
    if config.dataset:
        ds = load_dataset(Path(config.dataset), config.output_len, tokenizer, limit=n if config.requests else None)
        return Workload(list(ds.requests), f"{ds.format} file {ds.path.name}: {len(ds.requests)} prompts", profile)
    if config.scenario:
        return Workload(
            scenario_requests(config.scenario, n, tokenizer, config.seed), f"scenario {config.scenario}", profile
        )
    spec = SyntheticSpec(
        config.input_len,
        config.output_len,
        input_dist=config.input_dist,
        output_dist=config.output_dist,
        range_ratio=config.range_ratio,
        shared_prefix_len=config.shared_prefix_len,
        seed=config.seed,
    )
    description = (
        f"synthetic: {config.input_len} in / {config.output_len} out tokens ({config.input_dist}/{config.output_dist})"
    )
    return Workload(synthetic_requests(spec, n, tokenizer), description, profile)


def _session_workload(config: BenchmarkConfig, tokenizer: TextTokenizer, profile: LoadProfile) -> Workload:
    """Conversations of `turns` turns: from a ShareGPT file's human turns, or synthetic user messages."""
    think = config.think_time_ms / 1000
    if config.dataset:
        limit = (config.requests or 64) + config.warmup_requests
        found = load_sharegpt_conversations(Path(config.dataset), config.turns, config.output_len, tokenizer, limit)
        turns = sum(len(c.turns) for c in found)
        description = f"sharegpt sessions from {Path(config.dataset).name}: {len(found)} conversations, {turns} turns"
        return Workload([], description, profile, Sessions(tuple(found), think))
    count = math.ceil((config.requests or 64) / config.turns) + config.warmup_requests
    spec = SyntheticSpec(config.input_len, config.output_len, seed=config.seed)
    conversations = synthetic_conversations(spec, count, config.turns, tokenizer)
    description = (
        f"synthetic sessions: {config.turns} turns of {config.input_len} in / {config.output_len} out tokens, "
        f"each with the history; think time {config.think_time_ms:g} ms"
    )
    return Workload([], description, profile, Sessions(tuple(conversations), think))


def client_conditions() -> ClientDoc:
    """The machine the load generator ran on (the client side of every figure)."""
    return ClientDoc(
        host=platform.node(),
        cpu_count=os.cpu_count(),
        python=platform.python_version(),
        os=f"{platform.system()} {platform.release()}",
        load_avg_1m=round(os.getloadavg()[0], 2),
        memory_gib=round(psutil.virtual_memory().total / 2**30, 1),
    )


def run_doc(
    run: RunResult, summary: BenchmarkSummary, meets_slo: bool | None = None, why_not: str | None = None
) -> RunDoc:
    """One run as the result keeps it: its summary, the client self-check and every record."""
    check = run.self_check
    return RunDoc(
        profile=run.profile.label,
        summary=summary,
        self_check=SelfCheckDoc(
            valid=check.valid,
            reasons=list(check.reasons),
            schedule_lag_p99_ms=check.schedule_lag_p99_ms,
            schedule_lag_max_ms=check.schedule_lag_max_ms,
            loop_lag_p99_ms=check.loop_lag_p99_ms,
            loop_lag_max_ms=check.loop_lag_max_ms,
        ),
        stopped_early=run.stopped_early,
        cancelled=run.cancelled,
        workers=run.workers,
        wall_s=run.wall_s,
        meets_slo=meets_slo,
        why_not=why_not,
        records=run.records,
    )


def _limits(config: BenchmarkConfig) -> RunLimits:
    return RunLimits(
        requests=config.requests,
        duration_s=config.duration_s,
        warmup_requests=config.warmup_requests,
        seed=config.seed,
        abandon_rate=config.cancel_rate,
        abandon_after_s=config.cancel_after_ms / 1000,
    )


async def _drive(
    config: BenchmarkConfig,
    endpoint: Endpoint,
    workload: Workload,
    tokenizer: TextTokenizer,
    progress: ProgressCallback | None,
    cancel: threading.Event,
    origin: float,
) -> RunResult | SweepResult:
    limits = _limits(config)
    options = RequestOptions(temperature=config.temperature, seed=None)
    requests, profile = workload.requests, workload.profile
    if profile.kind == "sweep":
        sweep = SweepOptions(rates=config.sweep_rates, saturation_concurrency=config.sweep_concurrency)
        return await run_sweep(
            endpoint,
            requests,
            limits,
            config.slo(),
            sweep,
            tokenizer=tokenizer,
            request_options=options,
            progress=progress,
            cancel=cancel,
            origin=origin,
        )
    return await run_load(
        endpoint,
        requests,
        profile,
        limits,
        tokenizer=tokenizer,
        options=options,
        progress=progress,
        cancel=cancel,
        origin=origin,
        sessions=workload.sessions,
    )


def make_target(
    config: BenchmarkConfig, status: Callable[[str], None], cancel: threading.Event | None = None
) -> BundledTarget | RemoteTarget:
    """The target `config` names, not yet started or probed; `cancel` stops a bundled server's start."""
    quant = config.bundled_quant()
    if quant is None:
        key = config.api_key.get_secret_value() if config.api_key else None
        status(f"probing {redact_url(config.target)}")
        return RemoteTarget(config.target, key, config.model, config.api)
    weights_dir = None
    if config.weights is not None:
        from engine.errors import WeightsDirError  # torch: only once a bundled server is about to start anyway
        from engine.model.weights_dir import stored_format

        weights_dir = str(Path(config.weights).expanduser())
        try:
            quant = stored_format(Path(weights_dir))
        except WeightsDirError as exc:
            raise TargetError(str(exc)) from exc
    options = BundledOptions(
        quant=quant,
        device=config.device,
        threads=config.threads,
        max_num_seqs=config.max_num_seqs,
        api=config.api,
        weights_dir=weights_dir,
        eager=config.eager,
        extra_args=("--step-log", str(Path(config.step_log).expanduser())) if config.step_log else (),
    )
    how = quant if weights_dir is None else f"{quant} from {weights_dir}"
    how += ", eager decode" if config.eager else ", compiled decode"
    status(f"starting the bundled engine ({how}) and waiting for /health")
    return BundledTarget(options, cancel, status)


def run_benchmark(
    config: BenchmarkConfig,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    on_status: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """Start or probe the target `config` names, measure it, stop it; return the result document.

    Raises TargetError before any load when the target cannot be reached or used.
    """
    target = make_target(config, on_status or (lambda _msg: None), cancel)
    with target as endpoint:
        return measure(config, endpoint, target, progress, cancel, on_status)


def measure(
    config: BenchmarkConfig,
    endpoint: Endpoint,
    target: BundledTarget | RemoteTarget,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    on_status: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """Measure an endpoint that is already up and probed (the readiness checklist shares one target)."""
    status = on_status or (lambda _msg: None)
    cancel = cancel or threading.Event()
    started = datetime.now(UTC).replace(microsecond=0)
    tokenizer = bundled_tokenizer()
    workload = build_workload(config, tokenizer)
    warnings: list[str] = []
    if config.bundled_quant() is None and not config.dataset:
        warnings.append(
            "prompts were sized with the bundled SmolLM2 tokenizer; the server's usage gives the real lengths"
        )
    endpoint = replace(
        endpoint,
        read_timeout_s=config.read_timeout_s,
        max_event_bytes=config.max_event_bytes,
        max_response_bytes=config.max_response_bytes,
    )
    status(f"running {workload.profile.label} on {endpoint.model}")
    before = probe_rtt_sync(endpoint)
    origin = time.perf_counter()
    monitor = ResourceMonitor(pid=endpoint.server_pid, interval_s=config.monitor_interval_s, origin=origin)
    monitor.start()
    scraper = MetricsScraper(endpoint, origin=origin) if config.scrape_metrics else None
    if scraper is not None:
        scraper.start()
        scraper.wait_first()  # the baseline is read before any request is sent
    try:
        if config.workers > 1:
            outcome = run_distributed(
                endpoint,
                workload.requests,
                workload.profile,
                _limits(config),
                config.workers,
                address=config.ray_address,
                tokenizer=tokenizer,
                cancel=cancel,
                origin=origin,
            )
        else:
            outcome = asyncio.run(_drive(config, endpoint, workload, tokenizer, progress, cancel, origin))
    except BaseException:
        if scraper is not None:
            scraper.stop()
        raise
    finally:
        samples = monitor.stop()
    followed = None
    if scraper is not None and config.cancel_rate > 0 and not cancel.is_set():
        followed = follow_up(scraper, time.perf_counter() - origin, config.cancel_follow_up_s)
    timeline = None if scraper is None else scraper.stop()
    if followed is not None and followed.recovered_after_s is None:
        warnings.append(followed.line())
    network = NetworkDoc(before=before, after=probe_rtt_sync(endpoint))
    server_log = target.log_tail(60) if isinstance(target, BundledTarget) else None
    slo = config.slo()
    if isinstance(outcome, SweepResult):
        runs = [run_doc(s.run, s.summary, s.meets_slo, s.why_not) for s in outcome.steps]
        sweep = SweepDoc(
            max_rate_meeting_slo=outcome.max_rate_meeting_slo,
            stopped=outcome.stopped,
            attainment=SweepOptions().attainment,
        )
        valid = all(s.run.self_check.valid for s in outcome.steps)
    else:
        runs = [run_doc(outcome, summarize(outcome.records, slo))]
        sweep = None
        valid = outcome.self_check.valid
    return BenchmarkResult(
        tool=ToolDoc(name="preflight", version=__version__),
        started_at=started,
        finished_at=datetime.now(UTC).replace(microsecond=0),
        config=config.redacted(),
        target=target.describe(),
        endpoint=endpoint.redacted(),
        workload=workload.description,
        slo=None if slo is None else SloDoc(ttft_ms=slo.ttft_ms, tpot_ms=slo.tpot_ms, e2e_ms=slo.e2e_ms),
        client=client_conditions(),
        valid=valid,
        cancelled=cancel.is_set(),
        warnings=warnings,
        runs=runs,
        sweep=sweep,
        resources=ResourcesDoc(summary=summarize_resources(samples), samples=samples, gpu_note=monitor.gpu_note),
        network=network,
        metrics=timeline,
        metrics_follow_up=followed,
        server_log_tail=server_log,
    )
