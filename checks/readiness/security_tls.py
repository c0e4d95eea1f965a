"""Transport security: plain HTTP beyond this machine, or a TLS endpoint with a bad or expiring certificate.

The handshake is made here with `ssl` over asyncio (not through aiohttp) so the
protocol version and the certificate's expiry can be read off the connection. It
verifies like a client would: the system's trust store (which honours SSL_CERT_FILE,
so a private CA can be trusted the usual way), hostname checking on, TLS 1.2 or later.
A plain-HTTP endpoint is still contacted once (a TCP connect) so a dead target is an
ERROR rather than a verdict about a server that is not there.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from urllib.parse import urlsplit

from checks.readiness.check import Check, CheckContext
from checks.readiness.security_probe import LLM02
from reports.check_result import Category, CheckResult, CheckStatus, Exposure

HANDSHAKE_TIMEOUT_S = 10.0
EXPIRY_WARN_DAYS = 30.0


def _host_port(base_url: str) -> tuple[str, int, str]:
    parts = urlsplit(base_url)
    default = 443 if parts.scheme == "https" else 80
    return parts.hostname or "", parts.port or default, parts.scheme


async def _connect(host: str, port: int, tls: ssl.SSLContext | None) -> asyncio.StreamWriter:
    """An open connection (TLS when `tls` is given) within HANDSHAKE_TIMEOUT_S."""
    _reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None),
        HANDSHAKE_TIMEOUT_S,
    )
    return writer


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 2.0)
    except (TimeoutError, OSError, ssl.SSLError):
        return  # the connection is going away either way; its close handshake proves nothing


async def check_tls(ctx: CheckContext, check: Check) -> CheckResult:
    """http:// is FAIL for public and WARN for internal exposure; https:// must verify and not expire soon."""
    host, port, scheme = _host_port(ctx.endpoint.base_url)
    if scheme == "https":
        return await _check_https(check, host, port)
    try:
        await _close(await _connect(host, port, None))
    except (TimeoutError, OSError) as exc:
        return check.error(f"could not connect to {host}:{port}: {type(exc).__name__}: {exc}")
    shown = [f"TCP connect to {host}:{port} -> open; the URL scheme is http (no TLS)"]
    if ctx.exposure == Exposure.PUBLIC:
        return check.result(
            CheckStatus.FAIL,
            "a public endpoint is served over plain HTTP",
            value="http",
            threshold="https",
            evidence=shown,
        )
    if ctx.exposure == Exposure.INTERNAL:
        return check.result(
            CheckStatus.WARN,
            "an internal endpoint is served over plain HTTP: keys and prompts cross the network in clear text",
            value="http",
            threshold="https",
            evidence=shown,
        )
    return check.result(
        CheckStatus.PASS, "plain HTTP, acceptable for a local-only endpoint", value="http", evidence=shown
    )


async def _check_https(check: Check, host: str, port: int) -> CheckResult:
    tls = ssl.create_default_context()
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        writer = await _connect(host, port, tls)
    except ssl.SSLCertVerificationError as exc:
        why = exc.verify_message or str(exc)
        return check.result(
            CheckStatus.FAIL,
            f"the certificate does not verify: {why}",
            value="invalid",
            evidence=[f"TLS handshake with {host}:{port} -> certificate rejected: {why}"],
        )
    except ssl.SSLError as exc:
        return check.result(
            CheckStatus.FAIL,
            f"the TLS handshake failed: {exc.reason or exc}",
            evidence=[f"TLS handshake with {host}:{port} -> {exc}"],
        )
    except (TimeoutError, OSError) as exc:
        return check.error(f"could not connect to {host}:{port}: {type(exc).__name__}: {exc}")
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        version = ssl_object.version() if ssl_object is not None else None
        cert = ssl_object.getpeercert() if ssl_object is not None else None
    finally:
        await _close(writer)
    if not cert or "notAfter" not in cert:
        return check.error(f"the TLS handshake with {host}:{port} gave no certificate to read")
    days_left = (ssl.cert_time_to_seconds(cert["notAfter"]) - time.time()) / 86400
    shown = [f"TLS handshake with {host}:{port} -> {version}, certificate verified, notAfter {cert['notAfter']}"]
    expiring = days_left < EXPIRY_WARN_DAYS
    finding = (
        f"the certificate expires in {days_left:.1f} days"
        if expiring
        else f"the certificate verifies and is valid for {days_left:.0f} more days"
    )
    return check.result(
        CheckStatus.WARN if expiring else CheckStatus.PASS,
        f"{version}; {finding}",
        value=round(days_left, 1),
        threshold=EXPIRY_WARN_DAYS,
        unit="days",
        evidence=shown,
    )


TLS = Check(
    "security.tls",
    Category.SECURITY,
    "Traffic beyond this machine is encrypted (TLS)",
    check_tls,
    LLM02,
    "Terminate TLS 1.2+ in front of the server (reverse proxy or load balancer) with a certificate from a trusted CA, "
    "and renew it before it expires.",
)
