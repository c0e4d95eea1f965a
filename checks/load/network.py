"""Probe the network round trip to a target: fresh connections, each step timed on its own.

The load generator's client keeps connections open, so its TTFT holds one
network round trip (request out, first token back) and no handshake. This probe
opens `samples` fresh connections with plain asyncio streams (so each step is
visible) and times: the TCP handshake, one round trip and nothing else; the TLS
handshake for https; and a minimal `GET /v1/models` to its first response byte,
which adds the server's shortest path. A failed sample is kept as an error line,
never raised: a probe must not cost a run.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from urllib.parse import urlsplit

from checks.load.endpoint import Endpoint, root_url
from reports.network import RttProbe

PROBE_SAMPLES = 5
PROBE_TIMEOUT_S = 5.0


def _request(endpoint: Endpoint, host_header: str, path: str) -> bytes:
    lines = [f"GET {path}/v1/models HTTP/1.1", f"Host: {host_header}", "Connection: close", "Accept: */*"]
    if endpoint.api_key:
        lines.append(f"Authorization: Bearer {endpoint.api_key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _sample(endpoint: Endpoint, probe: RttProbe, timeout_s: float) -> None:
    parts = urlsplit(root_url(endpoint.base_url))
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    writer = None
    try:
        t0 = time.perf_counter()
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        t1 = time.perf_counter()
        probe.tcp_connect_ms.append((t1 - t0) * 1000)
        if secure:
            await asyncio.wait_for(writer.start_tls(ssl.create_default_context(), server_hostname=host), timeout_s)
            tls_done = time.perf_counter()
            probe.tls_ms.append((tls_done - t1) * 1000)
        writer.write(_request(endpoint, parts.netloc, parts.path.rstrip("/")))
        await writer.drain()
        t2 = time.perf_counter()
        if not await asyncio.wait_for(reader.read(1), timeout_s):
            raise ConnectionError("the server closed the connection without answering")
        probe.first_byte_ms.append((time.perf_counter() - t2) * 1000)
    except TimeoutError:
        probe.errors.append(f"no answer within {timeout_s:g} s")
    except (OSError, ssl.SSLError, ConnectionError) as exc:
        probe.errors.append(f"{type(exc).__name__}: {exc}"[:200])
    finally:
        if writer is not None:
            writer.close()


async def probe_rtt(endpoint: Endpoint, samples: int = PROBE_SAMPLES, timeout_s: float = PROBE_TIMEOUT_S) -> RttProbe:
    """`samples` fresh connections one after another (never in parallel: they would queue on each other)."""
    probe = RttProbe(tcp_connect_ms=[])
    for _ in range(samples):
        await _sample(endpoint, probe, timeout_s)
    return probe


def probe_rtt_sync(endpoint: Endpoint, samples: int = PROBE_SAMPLES, timeout_s: float = PROBE_TIMEOUT_S) -> RttProbe:
    return asyncio.run(probe_rtt(endpoint, samples, timeout_s))
