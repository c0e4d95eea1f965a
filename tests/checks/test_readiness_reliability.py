"""Reliability checks against the real bundled server (PASS; SIGTERM on a server of its own),
planted faults (the KV leak FAILs the storm, missing metrics never PASS) and dead targets (ERROR)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from checks.load.endpoint import Endpoint
from checks.load.targets import BundledOptions, BundledTarget, free_port
from checks.readiness.check import Check, CheckContext, Declared
from checks.readiness.reliability import (
    CANCEL_STORM,
    FINAL_CHECKS,
    QUEUE_OVERFLOW,
    RELIABILITY_CHECKS,
)
from checks.readiness.shutdown import SIGTERM_DRAIN
from checks.readiness.slow_reader import SLOW_READER
from reports.check_result import CheckResult, CheckStatus, Exposure
from tests.planted_server import MODEL, Faults, PlantedServer
from tests.server_harness import MODEL as BUNDLED_MODEL
from tests.server_harness import RemoteServer, start_server

MAX_QUEUE = 4  # the slow-reader check sends 3 streams at once: they must all fit in the queue
MAX_NUM_SEQS = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    log = Path(tmp_path_factory.mktemp("reliability")) / "server.log"
    args = ["--quant", "fp32", "--max-num-seqs", str(MAX_NUM_SEQS), "--max-queue", str(MAX_QUEUE)]
    srv = start_server(args, log)
    yield srv
    srv.stop()


def _ctx(url: str, model: str, key: str | None, declared: Declared | None = None) -> CheckContext:
    endpoint = Endpoint(url, model, api="chat", api_key=key)
    return CheckContext(endpoint, Exposure.LOCAL, None, declared=declared or Declared())


def _run(check: Check, ctx: CheckContext) -> CheckResult:
    return asyncio.run(check.run(ctx, check))


def bundled_ctx(server: RemoteServer) -> CheckContext:
    declared = Declared(max_queue=MAX_QUEUE, concurrency=MAX_NUM_SEQS)
    return _ctx(server.url, BUNDLED_MODEL, server.api_key, declared)


def _planted(faults: Faults, **options: object) -> PlantedServer:
    # A burst of the checks' size must meet the queue limit, not the rate limit.
    settings: dict[str, object] = {"rate_limit_burst": 1000, "rate_limit_rpm": 60_000, **options}
    return PlantedServer(faults, **settings)  # type: ignore[arg-type]


def test_the_destructive_check_runs_last_and_apart() -> None:
    assert [c.id for c in RELIABILITY_CHECKS] == [
        "reliability.cancel_storm",
        "reliability.slow_reader",
        "reliability.queue_overflow",
    ]
    assert FINAL_CHECKS == [SIGTERM_DRAIN]
    assert SIGTERM_DRAIN not in RELIABILITY_CHECKS


# --- the real bundled server ---


def test_cancel_storm_passes_on_the_bundled_server(server: RemoteServer) -> None:
    result = _run(CANCEL_STORM, bundled_ctx(server))
    assert result.status == CheckStatus.PASS, result
    assert "before: running 0" in result.evidence[0]
    assert server.metrics()["preflight:num_requests_running"] == 0


def test_slow_reader_does_not_stall_the_bundled_server(server: RemoteServer) -> None:
    result = _run(SLOW_READER, bundled_ctx(server))
    assert result.status == CheckStatus.PASS, (result.message, result.evidence)
    assert any(e.startswith("slow reader: HTTP 200") for e in result.evidence), result.evidence


def test_queue_overflow_gets_503_quickly_on_the_bundled_server(server: RemoteServer) -> None:
    result = _run(QUEUE_OVERFLOW, bundled_ctx(server))
    assert result.status == CheckStatus.PASS, result
    assert isinstance(result.value, int) and result.value >= 1
    assert "0 timeout, 0 other" in " ".join(result.evidence)


@pytest.fixture
def bundled_target(tmp_path: Path) -> Iterator[BundledTarget]:
    target = BundledTarget(BundledOptions(quant="fp32", threads=1, max_num_seqs=4, log_dir=tmp_path, eager=True))
    yield target
    target.stop()


def test_sigterm_drains_in_flight_streams_and_exits_0(bundled_target: BundledTarget) -> None:
    endpoint = bundled_target.start()
    ctx = CheckContext(endpoint, Exposure.LOCAL, None, bundled=bundled_target)
    result = _run(SIGTERM_DRAIN, ctx)
    assert result.status == CheckStatus.PASS, (result, bundled_target.log_tail())
    assert result.evidence[-1] == "exit code 0"
    assert bundled_target.proc is not None and bundled_target.proc.returncode == 0


def test_sigterm_is_skipped_for_a_remote_target() -> None:
    result = _run(SIGTERM_DRAIN, _ctx("http://127.0.0.1:9", MODEL, None))
    assert result.status == CheckStatus.SKIP


# --- planted faults ---


def test_cancel_storm_passes_on_a_clean_planted_server() -> None:
    with _planted(Faults(), max_running=16, max_queue=16, token_delay_s=0.02) as planted:
        result = _run(CANCEL_STORM, _ctx(planted.base_url, MODEL, planted.api_key))
    assert result.status == CheckStatus.PASS, result


def test_kv_leak_after_cancellations_fails_the_storm() -> None:
    with _planted(Faults(kv_leak_on_cancel=True), max_running=16, max_queue=16, token_delay_s=0.02) as planted:
        result = _run(CANCEL_STORM, _ctx(planted.base_url, MODEL, planted.api_key))
    assert result.status == CheckStatus.FAIL, result
    assert "not freed" in result.message
    assert "running 8" in result.message


def test_without_metrics_the_storm_is_at_most_a_warning() -> None:
    with _planted(Faults(no_metrics=True), max_running=16, max_queue=16, token_delay_s=0.02) as planted:
        result = _run(CANCEL_STORM, _ctx(planted.base_url, MODEL, planted.api_key))
    assert result.status == CheckStatus.WARN, result
    assert "not checked" in result.message


def test_queue_overflow_passes_on_the_planted_server() -> None:
    with _planted(Faults(), max_running=4, max_queue=8, token_delay_s=0.05) as planted:
        declared = Declared(max_queue=8, concurrency=4)
        result = _run(QUEUE_OVERFLOW, _ctx(planted.base_url, MODEL, planted.api_key, declared))
    assert result.status == CheckStatus.PASS, result


def test_queue_overflow_with_no_limit_seen_is_not_a_pass() -> None:
    # The deployment claims a queue of 2, but the server queues 64: nothing is shed.
    with _planted(Faults(), max_running=4, max_queue=64, token_delay_s=0.01) as planted:
        declared = Declared(max_queue=2, concurrency=4)
        result = _run(QUEUE_OVERFLOW, _ctx(planted.base_url, MODEL, planted.api_key, declared))
    assert result.status == CheckStatus.WARN, result


def test_queue_overflow_needs_a_declared_limit() -> None:
    result = _run(QUEUE_OVERFLOW, _ctx("http://127.0.0.1:9", MODEL, None))
    assert result.status == CheckStatus.SKIP
    assert "max_queue" in result.message


# --- a dead target: ERROR, never PASS ---


@pytest.mark.parametrize("check", [CANCEL_STORM, SLOW_READER, QUEUE_OVERFLOW], ids=lambda c: c.id)
def test_a_dead_target_is_error(check: Check) -> None:
    ctx = _ctx(f"http://127.0.0.1:{free_port()}", MODEL, "key", Declared(max_queue=2, concurrency=2))
    result = _run(check, ctx)
    assert result.status == CheckStatus.ERROR, result
