"""'Test connection' (`checks.connection`, `python -m checks connect`) against real servers on loopback:
the bundled engine with a key, the planted-fault server, and a port nobody listens on."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from checks.cli import main
from checks.connection import connect
from checks.load.endpoint import check_target_url
from checks.load.targets import free_port
from checks.presets import PRESETS, preset_for
from tests.planted_server import Faults, PlantedServer
from tests.server_harness import MODEL, RemoteServer, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    srv = start_server(["--quant", "int4", "--max-num-seqs", "2"], tmp_path_factory.mktemp("conn") / "server.log")
    try:
        yield srv
    finally:
        srv.stop()


def test_the_bundled_server_with_its_key_is_ready(server: RemoteServer, capsys: pytest.CaptureFixture[str]) -> None:
    report = connect(server.url + "/v1", server.api_key)
    assert report.ok, report
    assert report.models == [MODEL] and report.model == MODEL and report.models_ms is not None
    assert report.auth == "required and accepted"
    assert report.streaming and report.ttft_ms is not None and report.ttft_ms > 0
    assert report.stream_usage and report.ignore_eos
    assert (report.metrics, report.server) == ("preflight", "Preflight's bundled engine")
    assert main(["connect", server.url + "/v1", "--api-key", server.api_key]) == 0
    printed = capsys.readouterr().out
    assert "required and accepted" in printed and "ready to measure" in printed
    assert server.api_key not in printed  # the key is used, never shown
    assert main(["connect", server.url + "/v1", "--api-key", server.api_key, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["key_given"] is True and server.api_key not in json.dumps(data)


def test_a_wrong_or_missing_key_is_named(server: RemoteServer, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = connect(server.url + "/v1", "not-the-key")
    assert not wrong.ok and wrong.auth == "refused" and wrong.streaming is None
    assert wrong.problems == ["GET /v1/models answered 401: the key was refused"]
    missing = connect(server.url + "/v1")
    assert missing.auth == "required: no key was given"
    assert missing.problems == ["GET /v1/models answered 401: it needs an API key"]
    assert main(["connect", server.url + "/v1"]) == 1
    assert "not ready to measure" in capsys.readouterr().out


def test_an_unknown_model_is_a_problem_and_the_served_ones_are_listed(server: RemoteServer) -> None:
    report = connect(server.url + "/v1", server.api_key, model="gpt-4o")
    assert not report.ok and report.streaming is False
    assert report.problems == [f"model 'gpt-4o' is not served at {server.url}/v1; it serves: {MODEL}"]


def test_a_server_that_checks_no_key_and_has_no_metrics() -> None:
    with PlantedServer(Faults(no_auth=True, no_metrics=True)) as planted:
        report = connect(planted.base_url, "anything")
    assert report.ok, report  # measurable: the missing key check is the security checks' finding, not a blocker
    assert report.auth == "not required"
    assert report.metrics is None and report.metrics_note == "GET /metrics answered 404"


def test_nobody_listening_and_bad_urls(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    report = connect(url)
    assert not report.reachable and report.streaming is None and report.metrics is None
    assert report.problems[0].startswith(f"cannot reach {url.removesuffix('/v1')}:")
    assert main(["connect", url]) == 1
    assert main(["connect", "http://user:secret@127.0.0.1:8000/v1"]) == 2
    assert "secret" not in capsys.readouterr().err
    assert main(["connect"]) == 2


def test_presets_are_valid_targets_and_name_their_dialects(capsys: pytest.CaptureFixture[str]) -> None:
    for preset in PRESETS.values():
        assert check_target_url(preset.base_url) == preset.base_url
        if preset.metrics is not None:
            assert preset_for(preset.metrics) == preset
    assert preset_for(None) is None
    assert main(["connect", "--preset", "sglang", PRESETS["sglang"].base_url.replace("30000", str(free_port()))]) == 1
    assert "SGLang: start it with --enable-metrics" in capsys.readouterr().out


def test_the_report_never_holds_a_key(server: RemoteServer) -> None:
    report = connect(f"{server.url}/v1", server.api_key)
    assert server.api_key not in report.model_dump_json()
