"""Monitoring checks against the real bundled server (PASS), planted faults (FAIL/SKIP, never a
false PASS) and a dead target (ERROR)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from checks.load.endpoint import Endpoint
from checks.load.targets import free_port
from checks.readiness.check import Check, CheckContext
from checks.readiness.metrics_scrape import MetricsScraper
from checks.readiness.monitoring import HEALTH, METRICS, METRICS_TIMELINE, MONITORING_CHECKS, TIMELINE_KEY
from checks.readiness.streams import new_session, run_stream, stream_body
from reports.check_result import CheckResult, CheckStatus, Exposure
from reports.metrics_timeline import MetricsSample, MetricsTimeline
from tests.planted_server import MODEL, Faults, PlantedServer
from tests.server_harness import MODEL as BUNDLED_MODEL
from tests.server_harness import RemoteServer, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    log = Path(tmp_path_factory.mktemp("monitoring")) / "server.log"
    srv = start_server(["--quant", "fp32", "--max-num-seqs", "4"], log)
    yield srv
    srv.stop()


def _ctx(url: str, model: str, key: str | None) -> CheckContext:
    return CheckContext(Endpoint(url, model, api="chat", api_key=key), Exposure.LOCAL, None)


def _run(check: Check, ctx: CheckContext) -> CheckResult:
    return asyncio.run(check.run(ctx, check))


def bundled_ctx(server: RemoteServer) -> CheckContext:
    return _ctx(server.url, BUNDLED_MODEL, server.api_key)


def test_checks_are_listed_once_with_unique_ids() -> None:
    ids = [c.id for c in MONITORING_CHECKS]
    assert ids == ["monitoring.health", "monitoring.metrics", "monitoring.metrics_timeline"]


def test_health_passes_on_the_bundled_server(server: RemoteServer) -> None:
    result = _run(HEALTH, bundled_ctx(server))
    assert result.status == CheckStatus.PASS, result
    assert result.evidence[0].startswith("GET /health (no key) -> 200")
    assert any(e.startswith("POST /v1/chat/completions (the key) -> 200") for e in result.evidence)
    assert server.api_key not in " ".join(result.evidence)


def test_metrics_pass_on_the_bundled_server_and_note_the_keyless_answer(server: RemoteServer) -> None:
    result = _run(METRICS, bundled_ctx(server))
    assert result.status == CheckStatus.PASS, result
    assert result.value == 3
    assert "without the key GET /metrics -> 401" in " ".join(result.evidence)
    assert "preflight dialect" in " ".join(result.evidence)


def test_timeline_taken_during_real_load_passes(server: RemoteServer) -> None:
    ctx = bundled_ctx(server)

    async def load() -> list[bool]:
        body = stream_body(ctx.endpoint, 48)  # long enough for several scrapes however fast or busy the machine
        async with new_session(120) as session:
            ends = await asyncio.gather(*(run_stream(session, ctx.endpoint, body) for _ in range(3)))
        return [e.completed for e in ends]

    with MetricsScraper(ctx.endpoint, interval_s=0.25) as scraper:
        completed = asyncio.run(load())
    assert all(completed)
    ctx.scratch[TIMELINE_KEY] = scraper.timeline
    result = _run(METRICS_TIMELINE, ctx)
    assert result.status == CheckStatus.PASS, result
    timeline = scraper.timeline
    assert timeline.source == "preflight"
    assert (timeline.peak("running") or 0) >= 1
    assert (timeline.increase("generation_tokens_total") or 0) >= 144  # 3 streams x 48 tokens, ignore_eos


def test_health_200_while_not_ready_fails() -> None:
    with PlantedServer(Faults(health_always_ok=True), ready=False) as planted:
        result = _run(HEALTH, _ctx(planted.base_url, MODEL, planted.api_key))
    assert result.status == CheckStatus.FAIL, result
    assert result.message.startswith("health 200 while not ready")
    assert result.remediation


def test_health_that_agrees_with_a_loading_server_cannot_pass() -> None:
    with PlantedServer(Faults(), ready=False) as planted:
        result = _run(HEALTH, _ctx(planted.base_url, MODEL, planted.api_key))
    assert result.status == CheckStatus.ERROR, result


def test_a_saturated_server_is_not_judged_unready() -> None:
    # One slot, no queue, held by a long stream: the check's 1-token request gets "queue full".
    with PlantedServer(Faults(), max_running=1, max_queue=0, token_delay_s=0.05) as planted:
        ctx = _ctx(planted.base_url, MODEL, planted.api_key)

        async def while_busy() -> CheckResult:
            started = asyncio.Event()
            async with new_session(60) as session:
                hog = asyncio.ensure_future(
                    run_stream(session, ctx.endpoint, stream_body(ctx.endpoint, 400), first_chunk=started)
                )
                await started.wait()
                try:
                    return await HEALTH.run(ctx, HEALTH)
                finally:
                    hog.cancel()
                    await asyncio.gather(hog, return_exceptions=True)

        result = asyncio.run(while_busy())
    assert result.status == CheckStatus.ERROR, result
    assert "for load" in result.message


def test_planted_clean_server_passes_health_and_metrics() -> None:
    with PlantedServer(Faults()) as planted:
        ctx = _ctx(planted.base_url, MODEL, planted.api_key)
        results = [_run(HEALTH, ctx), _run(METRICS, ctx)]
    assert [r.status for r in results] == [CheckStatus.PASS, CheckStatus.PASS], results


def test_missing_metrics_fail_and_the_timeline_skips_with_the_reason() -> None:
    with PlantedServer(Faults(no_metrics=True)) as planted:
        ctx = _ctx(planted.base_url, MODEL, planted.api_key)
        metrics = _run(METRICS, ctx)
        with MetricsScraper(ctx.endpoint, interval_s=0.1) as scraper:
            time.sleep(0.3)
        ctx.scratch[TIMELINE_KEY] = scraper.timeline
        timeline = _run(METRICS_TIMELINE, ctx)
    assert metrics.status == CheckStatus.FAIL, metrics
    assert timeline.status == CheckStatus.SKIP, timeline
    assert "404" in timeline.message


def test_timeline_skips_when_no_benchmark_ran() -> None:
    result = _run(METRICS_TIMELINE, _ctx("http://127.0.0.1:9", MODEL, None))
    assert result.status == CheckStatus.SKIP
    assert "benchmark" in result.message


@pytest.mark.parametrize(
    ("samples", "status"),
    [
        ([MetricsSample(t_s=0, error="timeout after 5 s"), MetricsSample(t_s=1, error="HTTP 503")], CheckStatus.ERROR),
        (
            [
                MetricsSample(t_s=0, running=0, generation_tokens_total=5),
                MetricsSample(t_s=1, running=0, generation_tokens_total=5),
            ],
            CheckStatus.WARN,
        ),
        (
            [
                MetricsSample(t_s=0, running=0, generation_tokens_total=5),
                MetricsSample(t_s=1, error="HTTP 503"),
                MetricsSample(t_s=2, running=2, generation_tokens_total=50),
            ],
            CheckStatus.WARN,
        ),
    ],
    ids=["all-failed", "did-not-move", "gaps"],
)
def test_a_timeline_that_saw_nothing_never_passes(samples: list[MetricsSample], status: CheckStatus) -> None:
    ctx = _ctx("http://127.0.0.1:9", MODEL, None)
    ctx.scratch[TIMELINE_KEY] = MetricsTimeline(source="preflight", interval_s=1.0, samples=samples)
    assert _run(METRICS_TIMELINE, ctx).status == status


def test_a_dead_target_is_error_never_pass() -> None:
    ctx = _ctx(f"http://127.0.0.1:{free_port()}", MODEL, "key")
    assert _run(HEALTH, ctx).status == CheckStatus.ERROR
    assert _run(METRICS, ctx).status == CheckStatus.ERROR


def test_a_target_stopped_between_checks_is_error() -> None:
    with PlantedServer(Faults()) as planted:
        ctx = _ctx(planted.base_url, MODEL, planted.api_key)
        assert _run(HEALTH, ctx).status == CheckStatus.PASS
    assert _run(HEALTH, ctx).status == CheckStatus.ERROR
    assert _run(METRICS, ctx).status == CheckStatus.ERROR
