"""The /metrics vocabulary (vLLM, llama.cpp, Preflight names -> one set), the timeline document,
and the scraper thread against real HTTP servers on loopback (planted and hand-made)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from checks.load.endpoint import Endpoint
from checks.load.targets import free_port
from checks.readiness.metrics_names import DIALECTS, MetricsParseError, read_metrics
from checks.readiness.metrics_scrape import MetricsScraper, ScrapeError, fetch_metrics
from reports.metrics_timeline import MetricsSample, MetricsTimeline
from tests.planted_server import MODEL, Faults, PlantedServer
from tests.server_harness import in_process_server

# vLLM V1 (vllm/v1/metrics/loggers.py): model_name and engine labels, one series per data-parallel engine;
# the deprecated gpu_cache_usage_perc still beside kv_cache_usage_perc.
VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.9
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.4
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1200.0
vllm:prompt_tokens_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 800.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 5000.0
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 4.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 9.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 9.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.7
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 9.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 9.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 30.2
"""

# vLLM V0 (0.6): one engine, only the older KV gauge.
VLLM_OLD_TEXT = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="llama-2-7b"} 4.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="llama-2-7b"} 6.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="llama-2-7b"} 0.75
"""

# llama.cpp's server with --metrics, current builds: no KV gauge, no latency histograms.
LLAMACPP_TEXT = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 6886
# HELP llamacpp:prompt_seconds_total Prompt process time
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 29.03
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 3469
# HELP llamacpp:tokens_predicted_seconds_total Predict process time
# TYPE llamacpp:tokens_predicted_seconds_total counter
llamacpp:tokens_predicted_seconds_total 35.44
# HELP llamacpp:n_decode_total Total number of llama_decode() calls
# TYPE llamacpp:n_decode_total counter
llamacpp:n_decode_total 3512
# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s.
# TYPE llamacpp:prompt_tokens_seconds gauge
llamacpp:prompt_tokens_seconds 237.15
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 1
"""

# Older llama.cpp builds also exported the KV-cache ratio.
LLAMACPP_OLD_TEXT = (
    LLAMACPP_TEXT
    + """\
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.5
# HELP llamacpp:kv_cache_tokens KV-cache tokens.
# TYPE llamacpp:kv_cache_tokens gauge
llamacpp:kv_cache_tokens 1234
"""
)

# Preflight's engine (engine/serving/metrics.py), as `GET /metrics` renders it; NaN for rates not yet measured.
PREFLIGHT_TEXT = """\
# HELP preflight:time_to_first_token_seconds Time from request receipt to its first token.
# TYPE preflight:time_to_first_token_seconds histogram
preflight:time_to_first_token_seconds_bucket{le="0.1",model_name="smollm2-135m-instruct"} 1.0
preflight:time_to_first_token_seconds_bucket{le="+Inf",model_name="smollm2-135m-instruct"} 2.0
preflight:time_to_first_token_seconds_count{model_name="smollm2-135m-instruct"} 2.0
preflight:time_to_first_token_seconds_sum{model_name="smollm2-135m-instruct"} 0.4
preflight:time_to_first_token_seconds_created{model_name="smollm2-135m-instruct"} 1.7963971116916535e+09
# HELP preflight:e2e_request_latency_seconds Time from request receipt to its end.
# TYPE preflight:e2e_request_latency_seconds histogram
preflight:e2e_request_latency_seconds_bucket{le="+Inf",model_name="smollm2-135m-instruct"} 2.0
preflight:e2e_request_latency_seconds_count{model_name="smollm2-135m-instruct"} 2.0
preflight:e2e_request_latency_seconds_sum{model_name="smollm2-135m-instruct"} 3.0
# HELP preflight:num_requests_running Sequences in the running batch.
# TYPE preflight:num_requests_running gauge
preflight:num_requests_running{model_name="smollm2-135m-instruct"} 1.0
# HELP preflight:num_requests_waiting Sequences waiting to be scheduled.
# TYPE preflight:num_requests_waiting gauge
preflight:num_requests_waiting{model_name="smollm2-135m-instruct"} 0.0
# HELP preflight:kv_cache_usage_perc Fraction of KV cache blocks held by sequences (0..1).
# TYPE preflight:kv_cache_usage_perc gauge
preflight:kv_cache_usage_perc{model_name="smollm2-135m-instruct"} 0.125
# HELP preflight:prefix_cache_hit_rate Prompt tokens hit in the prefix cache / looked up (NaN: none yet).
# TYPE preflight:prefix_cache_hit_rate gauge
preflight:prefix_cache_hit_rate{model_name="smollm2-135m-instruct"} NaN
# HELP preflight:num_preemptions_total Sequences preempted for KV blocks.
# TYPE preflight:num_preemptions_total counter
preflight:num_preemptions_total{model_name="smollm2-135m-instruct"} 0.0
# HELP preflight:prompt_tokens_total Prompt tokens of admitted requests.
# TYPE preflight:prompt_tokens_total counter
preflight:prompt_tokens_total{model_name="smollm2-135m-instruct"} 33.0
# HELP preflight:generation_tokens_total Tokens generated by the engine.
# TYPE preflight:generation_tokens_total counter
preflight:generation_tokens_total{model_name="smollm2-135m-instruct"} 64.0
"""

# SGLang with --enable-metrics (names as in its production-metrics documentation), two tensor-parallel
# ranks' series of one model.
SGLANG_TEXT = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m",tp_rank="0"} 3.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m",tp_rank="0"} 2.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m",tp_rank="0"} 0.28
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="m",tp_rank="0"} 8128.0
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{model_name="m",tp_rank="0"} 7557.0
# HELP sglang:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_bucket{le="+Inf",model_name="m",tp_rank="0"} 11.0
sglang:time_to_first_token_seconds_count{model_name="m",tp_rank="0"} 11.0
sglang:time_to_first_token_seconds_sum{model_name="m",tp_rank="0"} 2.3
# HELP sglang:e2e_request_latency_seconds Histogram of End-to-end request latency in seconds
# TYPE sglang:e2e_request_latency_seconds histogram
sglang:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m",tp_rank="0"} 11.0
sglang:e2e_request_latency_seconds_count{model_name="m",tp_rank="0"} 11.0
sglang:e2e_request_latency_seconds_sum{model_name="m",tp_rank="0"} 40.1
"""

# TGI's router: gauges for the batch and the queue, per-request histograms whose sums are the token totals.
TGI_TEXT = """\
# TYPE tgi_queue_size gauge
tgi_queue_size 1
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 2
# TYPE tgi_request_input_length histogram
tgi_request_input_length_bucket{le="+Inf"} 4
tgi_request_input_length_sum 512
tgi_request_input_length_count 4
# TYPE tgi_request_generated_tokens histogram
tgi_request_generated_tokens_bucket{le="+Inf"} 4
tgi_request_generated_tokens_sum 256
tgi_request_generated_tokens_count 4
# TYPE tgi_request_duration histogram
tgi_request_duration_bucket{le="+Inf"} 4
tgi_request_duration_sum 6.5
tgi_request_duration_count 4
"""

# A server whose names Preflight does not map (a plain web app): it must read as unknown, not as zeros.
UNKNOWN_TEXT = """\
# TYPE http_requests_total counter
http_requests_total{code="200"} 10
# TYPE process_open_fds gauge
process_open_fds 12
"""

FIELDS_ORDER = (
    "running",
    "waiting",
    "kv_cache_usage",
    "prompt_tokens_total",
    "generation_tokens_total",
    "preemptions_total",
)


@pytest.mark.parametrize(
    ("text", "source", "expected", "histograms"),
    [
        (VLLM_TEXT, "vllm", (5.0, 1.0, 0.4, 2000.0, 5000.0, 7.0), True),
        (VLLM_OLD_TEXT, "vllm", (4.0, 6.0, 0.75, None, None, None), False),
        (LLAMACPP_TEXT, "llamacpp", (2.0, 1.0, None, 6886.0, 3469.0, None), False),
        (LLAMACPP_OLD_TEXT, "llamacpp", (2.0, 1.0, 0.5, 6886.0, 3469.0, None), False),
        (PREFLIGHT_TEXT, "preflight", (1.0, 0.0, 0.125, 33.0, 64.0, 0.0), True),
        (SGLANG_TEXT, "sglang", (3.0, 2.0, 0.28, 8128.0, 7557.0, None), True),
        (TGI_TEXT, "tgi", (2.0, 1.0, None, 512.0, 256.0, None), (False, True)),
    ],
    ids=["vllm-v1", "vllm-v0", "llamacpp", "llamacpp-old", "preflight", "sglang", "tgi"],
)
def test_each_dialect_maps_onto_one_vocabulary(
    text: str, source: str, expected: tuple, histograms: bool | tuple[bool, bool]
) -> None:
    reading = read_metrics(text)
    assert reading.source == source
    assert tuple(reading.values[name] for name in FIELDS_ORDER) == expected
    ttft, e2e = histograms if isinstance(histograms, tuple) else (histograms, histograms)
    assert reading.histograms == {"ttft_seconds": ttft, "e2e_seconds": e2e}


def test_vllm_prefers_the_new_kv_gauge_and_takes_the_fullest_engine() -> None:
    # gpu_cache_usage_perc says 0.9, but the current name wins; of engines at 0.25 and 0.4, the fuller one.
    assert read_metrics(VLLM_TEXT).values["kv_cache_usage"] == 0.4


def test_an_unknown_server_reads_as_unknown_not_as_zeros() -> None:
    reading = read_metrics(UNKNOWN_TEXT)
    assert reading.source is None
    assert reading.families == 2
    assert all(v is None for v in reading.values.values())


def test_nan_is_not_measured() -> None:
    text = "# TYPE preflight:kv_cache_usage_perc gauge\npreflight:kv_cache_usage_perc NaN\n"
    text += "# TYPE preflight:num_requests_running gauge\npreflight:num_requests_running 0\n"
    reading = read_metrics(text)
    assert reading.values["kv_cache_usage"] is None
    assert reading.values["running"] == 0.0


@pytest.mark.parametrize("text", ["<html><body>Not Found</body></html>", "vllm:num_requests_running abc\n", "\x00"])
def test_text_that_is_not_prometheus_is_an_error(text: str) -> None:
    with pytest.raises(MetricsParseError, match="not Prometheus text"):
        read_metrics(text)


def test_every_dialect_names_every_field() -> None:
    for source, names in DIALECTS.items():
        assert set(names) == set(FIELDS_ORDER) | {"ttft_seconds", "e2e_seconds"}, source
        prefix = "tgi_" if source == "tgi" else f"{source}:"  # TGI's router names have no colon
        assert all(n.startswith(prefix) for group in names.values() for n in group), source


def test_timeline_document_is_strict_and_summarises() -> None:
    samples = [
        MetricsSample(t_s=0.0, running=0, kv_cache_usage=0.0, generation_tokens_total=10),
        MetricsSample(t_s=1.0, error="timeout after 5 s"),
        MetricsSample(t_s=2.0, running=3, kv_cache_usage=0.5, generation_tokens_total=110),
    ]
    timeline = MetricsTimeline(source="preflight", interval_s=1.0, samples=samples)
    assert timeline.peak("running") == 3
    assert timeline.peak("waiting") is None
    assert timeline.increase("generation_tokens_total") == 100
    assert len(timeline.errors) == 1
    assert MetricsTimeline.model_validate_json(timeline.model_dump_json()) == timeline
    with pytest.raises(ValueError, match="not a metrics field"):
        timeline.peak("error")
    with pytest.raises(ValidationError):
        MetricsSample(t_s=0.0, gpu_util=0.5)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        MetricsTimeline(source="ollama", interval_s=1.0)  # type: ignore[arg-type]


# --- the scraper, against real servers on loopback ---


def _endpoint(url: str, key: str | None = None) -> Endpoint:
    return Endpoint(url, MODEL, api="chat", api_key=key)


def test_scraper_follows_the_planted_server_in_its_own_thread() -> None:
    with PlantedServer(Faults()) as server:
        endpoint = _endpoint(server.base_url, server.api_key)
        origin = time.perf_counter()
        with MetricsScraper(endpoint, interval_s=0.1, origin=origin) as scraper:
            time.sleep(0.5)
        timeline = scraper.timeline
    assert timeline.source == "preflight"
    assert timeline.note is None
    assert len(timeline.samples) >= 3
    assert not timeline.errors
    times = [s.t_s for s in timeline.samples]
    assert times == sorted(times) and times[0] >= 0
    assert timeline.samples[0].running == 0 and timeline.samples[0].kv_cache_usage == 0


def test_scraper_stops_early_on_404_and_says_why() -> None:
    with PlantedServer(Faults(no_metrics=True)) as server:
        with MetricsScraper(_endpoint(server.base_url, server.api_key), interval_s=0.05) as scraper:
            time.sleep(0.4)
        timeline = scraper.timeline
    assert timeline.source is None
    assert timeline.samples == []
    assert "404" in (timeline.note or "")


def test_scraper_with_a_wrong_key_stops_and_says_so() -> None:
    with PlantedServer(Faults()) as server:
        timeline = _scrape_for(_endpoint(server.base_url, "not-the-key"), 0.3)
    assert timeline.source is None
    assert "401" in (timeline.note or "")


def _scrape_for(endpoint: Endpoint, seconds: float, **kwargs: float) -> MetricsTimeline:
    scraper = MetricsScraper(endpoint, interval_s=kwargs.pop("interval_s", 0.05), **kwargs)  # type: ignore[arg-type]
    scraper.start()
    time.sleep(seconds)
    return scraper.stop()


def test_scraper_records_a_dead_port_and_never_raises() -> None:
    timeline = _scrape_for(_endpoint(f"http://127.0.0.1:{free_port()}"), 0.3, timeout_s=1.0)
    assert timeline.source is None
    assert len(timeline.samples) >= 2
    assert all(s.error and "Connection" in s.error for s in timeline.samples)
    assert timeline.note == "no scrape succeeded"


@pytest.fixture(scope="module")
def odd_server() -> Iterator[str]:
    """/huge sends 5 MB; /moved redirects to /metrics elsewhere; /garbage is HTML; /slow answers after 3 s."""

    async def huge(_request: Request) -> Response:
        return PlainTextResponse("x" * (5 * 1024 * 1024))

    async def moved(_request: Request) -> Response:
        return RedirectResponse("http://127.0.0.1:9/metrics", status_code=302)

    async def garbage(_request: Request) -> Response:
        return PlainTextResponse("<html>Welcome</html>")

    async def slow(_request: Request) -> Response:
        import asyncio

        await asyncio.sleep(3)
        return PlainTextResponse("")

    app = Starlette(
        routes=[
            Route(f"/{name}/metrics", fn)
            for name, fn in (("huge", huge), ("moved", moved), ("garbage", garbage), ("slow", slow))
        ]
    )
    with in_process_server(app) as (url, _thread):
        yield url


@pytest.mark.parametrize(
    ("prefix", "error"),
    [("huge", "body over 4194304 bytes"), ("moved", "HTTP 302"), ("slow", "timeout after 0.5 s")],
)
def test_fetch_is_bounded_and_never_follows_a_redirect(odd_server: str, prefix: str, error: str) -> None:
    with pytest.raises(ScrapeError, match=error):
        fetch_metrics(_endpoint(f"{odd_server}/{prefix}", "secret"), timeout_s=0.5)


def test_a_scrape_of_garbage_is_a_sample_with_its_error(odd_server: str) -> None:
    timeline = _scrape_for(_endpoint(f"{odd_server}/garbage"), 0.2)
    assert timeline.samples and all("not Prometheus text" in (s.error or "") for s in timeline.samples)


def test_a_long_run_is_thinned_not_unbounded() -> None:
    with PlantedServer(Faults()) as server:
        timeline = _scrape_for(_endpoint(server.base_url, server.api_key), 1.0, interval_s=0.02, max_samples=8)
    assert len(timeline.samples) < 8
    assert timeline.interval_s > 0.02
    assert "thinned" in (timeline.note or "")
    assert not math.isnan(timeline.samples[-1].t_s)
