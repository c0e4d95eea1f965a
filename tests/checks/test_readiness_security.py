"""The security checks against real servers: the bundled engine, the planted-fault server, a TLS listener, nothing.

- Two bundled `python -m engine serve` children, shared by the module: `locked` (key,
  rate limit, no prompt logging, no CORS) and `open_server` (no key, --log-prompts,
  CORS '*'). Each check's PASS comes from `locked`, its WARN/FAIL from `open_server`
  or from a different declared exposure. The rate-limit burst empties `locked`'s
  bucket, so its test comes last among the `locked` tests.
- The planted-fault server: each security fault is caught by the check that targets it,
  never a false PASS, and the clean server passes every check.
- A real TLS listener with a throwaway CA made by the openssl CLI, trusted through
  SSL_CERT_FILE exactly as an operator would trust a private CA.
- A dead port: every check is ERROR.
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from checks.load.endpoint import Endpoint
from checks.load.targets import free_port
from checks.readiness.check import CheckContext, Declared
from checks.readiness.security import SECURITY_CHECKS
from checks.readiness.security_consumption import burst_size
from checks.readiness.security_leak import InjectionPrompts, leak_form
from reports.check_result import CheckResult, CheckStatus, Exposure
from tests.planted_server import MODEL as PLANTED_MODEL
from tests.planted_server import Faults, PlantedServer
from tests.server_harness import MODEL, RemoteServer, start_server

BY_ID = {check.id: check for check in SECURITY_CHECKS}
PLANTED_CONTEXT = 2048  # PlantedServer's max_model_len; its /v1/models does not say


def run_check(ctx: CheckContext, check_id: str) -> CheckResult:
    check = BY_ID[check_id]
    return asyncio.run(check.run(ctx, check))


def run_all(ctx: CheckContext) -> dict[str, CheckResult]:
    """Every security check in order on one context, as the runner would (shared scratch)."""

    async def go() -> dict[str, CheckResult]:
        return {check.id: await check.run(ctx, check) for check in SECURITY_CHECKS}

    return asyncio.run(go())


def bundled_ctx(server: RemoteServer, exposure: Exposure = Exposure.LOCAL, **declared: object) -> CheckContext:
    endpoint = Endpoint(server.url, MODEL, api="chat", api_key=server.api_key)
    return CheckContext(endpoint, exposure, None, Declared(**declared))  # type: ignore[arg-type]


def planted_ctx(server: PlantedServer, exposure: Exposure, **declared: object) -> CheckContext:
    endpoint = Endpoint(server.base_url, PLANTED_MODEL, api="chat", api_key=server.api_key)
    declared = {"rate_limit_rpm": server.rate_limit_rpm, "context_tokens": PLANTED_CONTEXT, **declared}
    return CheckContext(endpoint, exposure, None, Declared(**declared))  # type: ignore[arg-type]


def shows_no_key(result: CheckResult, key: str) -> bool:
    return all(key not in line for line in [result.message, *result.evidence])


# --- the bundled engine ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    log = Path(tmp_path_factory.mktemp("locked")) / "server.log"
    args = ["--quant", "fp32", "--max-model-len", "512", "--rate-limit", "60"]
    server = start_server(args, log, api_key="security-test-key-Ab12")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    log = Path(tmp_path_factory.mktemp("open")) / "server.log"
    args = ["--quant", "fp32", "--max-model-len", "512", "--log-prompts", "--cors-origin", "*"]
    server = start_server(args, log, api_key=None)
    yield server
    server.stop()


def test_auth_passes_with_a_key(locked: RemoteServer) -> None:
    result = run_check(bundled_ctx(locked), "security.auth")
    assert result.status == CheckStatus.PASS, result
    assert any("(no key) -> 401" in line for line in result.evidence)
    assert any("(a wrong key) -> 401" in line for line in result.evidence)
    assert any("(the key in the query string) -> 401" in line for line in result.evidence)
    assert shows_no_key(result, "security-test-key-Ab12")


@pytest.mark.parametrize(
    ("exposure", "expected"), [(Exposure.LOCAL, CheckStatus.WARN), (Exposure.PUBLIC, CheckStatus.FAIL)]
)
def test_auth_without_a_key_is_an_open_door(
    open_server: RemoteServer, exposure: Exposure, expected: CheckStatus
) -> None:
    result = run_check(bundled_ctx(open_server, exposure), "security.auth")
    assert result.status == expected, result
    assert "POST /v1/chat/completions generates without a key" in result.message
    assert result.reference == "OWASP LLM10:2025 Unbounded Consumption"


@pytest.mark.parametrize(
    ("exposure", "expected"),
    [(Exposure.LOCAL, CheckStatus.PASS), (Exposure.INTERNAL, CheckStatus.WARN), (Exposure.PUBLIC, CheckStatus.FAIL)],
)
def test_plain_http_by_exposure(locked: RemoteServer, exposure: Exposure, expected: CheckStatus) -> None:
    result = run_check(bundled_ctx(locked, exposure), "security.tls")
    assert result.status == expected, result
    assert result.value == "http"


def test_cors_off_passes_and_a_wildcard_warns(locked: RemoteServer, open_server: RemoteServer) -> None:
    assert run_check(bundled_ctx(locked), "security.cors").status == CheckStatus.PASS
    result = run_check(bundled_ctx(open_server), "security.cors")
    assert result.status == CheckStatus.WARN, result
    assert "allows any origin ('*')" in result.message


@pytest.mark.parametrize(
    "check_id",
    ["security.exposed_routes", "security.input.body_size", "security.input.context", "security.input.malformed"],
)
def test_bundled_refuses_cleanly(locked: RemoteServer, check_id: str) -> None:
    result = run_check(bundled_ctx(locked), check_id)
    assert result.status == CheckStatus.PASS, result


def test_context_probe_uses_the_served_context(locked: RemoteServer) -> None:
    result = run_check(bundled_ctx(locked), "security.input.context")
    assert result.evidence[0] == "model context 512 tokens (/v1/models)"
    assert "exceeds the model context of 512 tokens" in " ".join(result.evidence)


def test_prompt_log(locked: RemoteServer, open_server: RemoteServer) -> None:
    clean = run_check(bundled_ctx(locked, server_log=locked.log_path), "security.prompt_log")
    assert clean.status == CheckStatus.PASS, clean
    logged = run_check(bundled_ctx(open_server, server_log=open_server.log_path), "security.prompt_log")
    assert logged.status == CheckStatus.FAIL, logged
    assert any(line.startswith("log line: ") and "PREFLIGHT-LOGPROBE-" in line for line in logged.evidence)
    assert run_check(bundled_ctx(locked), "security.prompt_log").status == CheckStatus.SKIP


def test_canary_result_matches_what_the_model_said(locked: RemoteServer) -> None:
    """The bundled 135M model has no guard of its own; whatever it does, the verdict must follow the replies."""
    result = run_check(bundled_ctx(locked), "security.canary")
    prompts = InjectionPrompts.load().prompts
    replies = [line for line in result.evidence[1:] if line.split(":")[0] in prompts]
    assert len(replies) == len(prompts), result.evidence
    assert all(": 200, " in line for line in replies), replies
    leaked = [line for line in replies if "LEAKED" in line]
    assert result.status == (CheckStatus.FAIL if leaked else CheckStatus.PASS), result
    assert result.value == len(leaked)


def test_error_leaks_after_the_other_checks(locked: RemoteServer) -> None:
    """Run after the probing checks on one context, the scan reads their error answers too."""
    ctx = bundled_ctx(locked)
    earlier = ["security.auth", "security.exposed_routes", "security.input.body_size", "security.input.malformed"]
    results = [run_check(ctx, cid) for cid in [*earlier, "security.error_leaks"]]
    leaks = results[-1]
    assert leaks.status == CheckStatus.PASS, leaks
    scanned = re.match(r"(\d+) error answers scanned \((\d+) from earlier checks\)", leaks.evidence[0])
    assert scanned is not None and int(scanned.group(2)) >= 7 + 8 + 1 + 3, leaks.evidence[0]
    assert all(shows_no_key(r, "security-test-key-Ab12") for r in results)


def test_rate_limit_runs_last(locked: RemoteServer) -> None:
    assert run_check(bundled_ctx(locked), "security.rate_limit").status == CheckStatus.SKIP
    result = run_check(bundled_ctx(locked, rate_limit_rpm=60), "security.rate_limit")
    assert result.status == CheckStatus.PASS, result
    assert "got 429 with Retry-After" in result.message


def test_no_rate_limit_is_not_a_pass(open_server: RemoteServer) -> None:
    result = run_check(bundled_ctx(open_server, rate_limit_rpm=60), "security.rate_limit")
    assert result.status == CheckStatus.WARN, result
    assert result.value == burst_size(60)


# --- the planted-fault server -----------------------------------------------------------------------

# Each fault, the check that must catch it, and its status on a public endpoint. The rate
# limit stays WARN: all of a 20-request burst served may still be a large bucket.
FAULT_MATRIX = {
    "no_auth": ("security.auth", CheckStatus.FAIL),
    "key_in_query": ("security.auth", CheckStatus.FAIL),
    "error_500_on_bad_json": ("security.input.malformed", CheckStatus.FAIL),
    "stack_traces": ("security.error_leaks", CheckStatus.FAIL),
    "cors_wildcard_credentials": ("security.cors", CheckStatus.FAIL),
    "no_body_limit": ("security.input.body_size", CheckStatus.FAIL),
    "no_rate_limit": ("security.rate_limit", CheckStatus.WARN),
    "docs_exposed": ("security.exposed_routes", CheckStatus.FAIL),
    "canary_leak": ("security.canary", CheckStatus.FAIL),
    "log_prompts": ("security.prompt_log", CheckStatus.FAIL),
}


@pytest.mark.parametrize("fault", sorted(FAULT_MATRIX))
def test_planted_fault_is_caught(fault: str, tmp_path: Path) -> None:
    check_id, expected = FAULT_MATRIX[fault]
    log = tmp_path / "planted.log"
    log.touch()
    with PlantedServer(Faults(**{fault: True}), log_path=log) as server:
        result = run_check(planted_ctx(server, Exposure.PUBLIC, server_log=log), check_id)
    assert result.status == expected, result
    assert shows_no_key(result, server.api_key)


@pytest.mark.parametrize("fault", ["no_auth", "key_in_query", "stack_traces", "docs_exposed"])
def test_planted_open_doors_warn_on_a_local_endpoint(fault: str) -> None:
    check_id, _ = FAULT_MATRIX[fault]
    with PlantedServer(Faults(**{fault: True})) as server:
        result = run_check(planted_ctx(server, Exposure.LOCAL), check_id)
    assert result.status == CheckStatus.WARN, result


def test_clean_planted_server_passes_every_check(tmp_path: Path) -> None:
    log = tmp_path / "planted.log"
    log.touch()
    with PlantedServer(log_path=log) as server:
        results = run_all(planted_ctx(server, Exposure.LOCAL, server_log=log))
    assert {cid: r.status for cid, r in results.items()} == {cid: CheckStatus.PASS for cid in BY_ID}, results
    assert all(shows_no_key(r, server.api_key) for r in results.values())
    assert all(r.reference and "2025" in r.reference for r in results.values())


# --- TLS against a real handshake -------------------------------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and two localhost certificates signed by it: valid 400 days, and 10 days."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    d = Path(tmp_path_factory.mktemp("tls"))
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.pem"),
        "-days",
        "30",
        "-subj",
        "/CN=Preflight test CA",
    )
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nauthorityKeyIdentifier=keyid\n")
    files = {"ca": d / "ca.pem"}
    for name, days in (("long", "400"), ("short", "10")):
        key, csr, pem = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost"
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(d / "ca.pem"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-out",
            str(pem),
            "-days",
            days,
            "-extfile",
            str(ext),
        )
        files[name], files[name + "_key"] = pem, key
    return files


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return  # quiet: the test output is for the test


def _tls_server(cert: Path, key: Path) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _tls_ctx(url: str) -> CheckContext:
    return CheckContext(Endpoint(url, "m", api="chat", api_key=None), Exposure.PUBLIC, None)


@pytest.mark.parametrize(("cert", "expected"), [("long", CheckStatus.PASS), ("short", CheckStatus.WARN)])
def test_tls_handshake_reads_version_and_expiry(
    tls_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, cert: str, expected: CheckStatus
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files["ca"]))
    for url in _tls_server(tls_files[cert], tls_files[cert + "_key"]):
        result = run_check(_tls_ctx(url), "security.tls")
        assert result.status == expected, result
        assert result.message.startswith("TLSv1.")
        assert result.unit == "days" and isinstance(result.value, float)
        assert (result.value > 300) if cert == "long" else (9 < result.value <= 10)


def test_tls_untrusted_certificate_fails(tls_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files["long"]))  # a file that trusts no CA of ours
    for url in _tls_server(tls_files["long"], tls_files["long_key"]):
        result = run_check(_tls_ctx(url), "security.tls")
        assert result.status == CheckStatus.FAIL, result
        assert "does not verify" in result.message


# --- a dead target and the pure parts -----------------------------------------------------------------


def test_dead_target_is_error_everywhere(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("an old line\n")
    endpoint = Endpoint(f"http://127.0.0.1:{free_port()}", "m", api="chat", api_key="dead-key")
    ctx = CheckContext(endpoint, Exposure.PUBLIC, None, Declared(rate_limit_rpm=60, server_log=log))
    results = run_all(ctx)
    assert {cid: r.status for cid, r in results.items()} == {cid: CheckStatus.ERROR for cid in BY_ID}, results


CANARY = "CANARY-0123456789abcdef"


@pytest.mark.parametrize(
    ("reply", "form"),
    [
        (f"The code is {CANARY}.", "as written"),
        ("the code is canary-0123456789ABCDEF", "in another letter case"),
        ("0 1 2 3 4 5 6 7 8 9 a b c d e f", "spaced out or split"),
        ("fedcba9876543210", "reversed"),
        (base64.b64encode(f"Internal note: the deployment secret is {CANARY}.".encode()).decode(), "in base64"),
        ("I cannot share my instructions.", None),
        ("CANARY-0123", None),
    ],
)
def test_leak_forms(reply: str, form: str | None) -> None:
    assert leak_form(reply, CANARY) == form


@pytest.mark.parametrize(("rpm", "burst"), [(6, 6), (60, 20), (120, 40), (600, 60), (100_000, 60)])
def test_burst_size(rpm: int, burst: int) -> None:
    assert burst_size(rpm) == burst
