"""Guards in front of the model, on a real uvicorn on loopback with no model loaded: the connection
limit, the wrong-key throttle, the per-address rate limit with a key, key normalization, and the
Host check that stops DNS rebinding when no key is set.

Each app runs with a load that never finishes (`BlockedLoad`), so `/version` answers 200 from the
app itself and nothing waits on a model. A second client address is 127.0.0.2 (all of 127/8 is
loopback on Linux).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from pydantic import ValidationError
from server_harness import BlockedLoad, in_process_server

from engine.serving.app import create_app
from engine.serving.options import ServerOptions
from engine.serving.security import TokenBucketLimiter, allowed_host_names, host_allowed, host_name


@contextmanager
def serve(options: ServerOptions) -> Iterator[str]:
    load = BlockedLoad()
    try:
        with in_process_server(create_app(options, load=load), options) as (url, _thread):
            yield url
    finally:
        load.release.set()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def hold_body(url: str, sent_bytes: int = 64 * 1024) -> socket.socket:
    """A connection that declares a 1 MiB body, sends part of it and keeps the rest back."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {1024 * 1024}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"x" * sent_bytes)
    return sock


# ---- connections ---------------------------------------------------------------------------------


def test_connections_above_the_limit_get_503_and_free_slots_are_reused() -> None:
    with serve(ServerOptions(max_connections=4)) as url:
        held = [hold_body(url) for _ in range(3)]  # with the next one, 4 connections are open
        try:
            time.sleep(0.2)  # let the server take the three in: the limit counts what it has accepted
            r = httpx.get(url + "/version", timeout=10)
            assert r.status_code == 503, r.text
            assert r.text == "Service Unavailable"
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 10
        while (status := httpx.get(url + "/version", timeout=10).status_code) != 200:
            assert status == 503 and time.monotonic() < deadline, "closed connections were never released"
            time.sleep(0.05)


# ---- the API key ---------------------------------------------------------------------------------


def test_wrong_keys_are_throttled_per_address_and_missing_keys_are_not() -> None:
    with serve(ServerOptions(api_key="right-key", auth_failure_limit=3)) as url:
        for _ in range(6):  # no key guesses nothing: a plain 401 every time
            assert httpx.get(url + "/version").status_code == 401
        for guess in ("a", "b", "c"):
            r = httpx.get(url + "/version", headers=bearer(guess))
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        for headers in (bearer("d"), bearer("right-key")):  # blocked before the key is looked at
            r = httpx.get(url + "/version", headers=headers)
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "too_many_auth_failures"
            assert int(r.headers["retry-after"]) >= 1
        other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        with other:  # another address is not blocked
            assert other.get(url + "/version", headers=bearer("right-key")).status_code == 200
        assert httpx.get(url + "/health").status_code == 503  # the open probe route is not throttled


def test_an_over_long_token_is_a_401_and_counts_as_a_wrong_key() -> None:
    with serve(ServerOptions(api_key="right-key", auth_failure_limit=1)) as url:
        r = httpx.get(url + "/version", headers=bearer("k" * 8000))
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/version", headers=bearer("right-key")).status_code == 429


@pytest.mark.parametrize("configured", ["s3cret\n", " s3cret", "s3cret\r\n"])
def test_a_key_read_with_whitespace_still_matches(configured: str) -> None:
    with serve(ServerOptions(api_key=configured)) as url:
        assert httpx.get(url + "/version", headers=bearer("s3cret")).status_code == 200
        assert httpx.get(url + "/version", headers={"Authorization": "Bearer  s3cret"}).status_code == 200


def test_with_a_key_the_rate_limit_is_per_client_address() -> None:
    with serve(ServerOptions(api_key="k", rate_limit_rpm=1, rate_limit_burst=2)) as url:
        first = [httpx.get(url + "/version", headers=bearer("k")).status_code for _ in range(3)]
        assert first == [200, 200, 429]
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as other:
            assert other.get(url + "/version", headers=bearer("k")).status_code == 200


# ---- the Host header -----------------------------------------------------------------------------

ACCEPTED_HOSTS = ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "[::1]:{port}", "10.1.2.3", "box.lan:8080"]
REFUSED_HOSTS = ["evil.example:{port}", "localhost.evil.example", "127.0.0.1.nip.io:{port}", "box.lan.evil", ""]


def test_a_rebinding_host_is_refused_without_a_key() -> None:
    with serve(ServerOptions()) as url:
        r = httpx.get(url + "/version", headers={"Host": "rebind.attacker.example"})
        assert r.status_code == 400, r.text
        assert httpx.get(url + "/version").status_code == 200  # 127.0.0.1:PORT, as every client of ours sends


def test_without_a_key_only_local_and_named_hosts_are_served() -> None:
    with serve(ServerOptions(allowed_hosts=("box.lan",))) as url:
        port = url.rsplit(":", 1)[1]
        for host in ACCEPTED_HOSTS:
            r = httpx.get(url + "/version", headers={"Host": host.format(port=port)})
            assert r.status_code == 200, (host, r.text)
        for host in REFUSED_HOSTS:
            r = httpx.get(url + "/version", headers={"Host": host.format(port=port)})
            assert r.status_code == 400, (host, r.text)
            assert r.json()["error"]["code"] == "invalid_host"
        assert httpx.get(url + "/health", headers={"Host": "evil.example"}).status_code == 400


def test_with_a_key_the_host_is_not_checked() -> None:
    with serve(ServerOptions(api_key="k")) as url:
        assert httpx.get(url + "/version", headers=bearer("k") | {"Host": "evil.example"}).status_code == 200


def test_a_star_allows_any_host() -> None:
    with serve(ServerOptions(allowed_hosts=("*",))) as url:
        assert httpx.get(url + "/version", headers={"Host": "proxy.example"}).status_code == 200


# ---- the pieces, without a socket ----------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_new_clients_does_not_reset_known_ones() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(rpm=60, burst=2, clock=clock)
    limiter.MAX_CLIENTS = 4
    for name in "abcd":
        assert [limiter.acquire(name) for _ in range(2)] == [0.0, 0.0]
    flood = [limiter.acquire(f"new-{i}") for i in range(50)]
    assert flood[:2] == [0.0, 0.0] and all(w > 0 for w in flood[2:])  # the newcomers share one bucket
    assert limiter.acquire("a") > 0  # still limited: its bucket was not thrown away
    assert limiter.clients == 4
    clock.now += limiter.full_after_s  # every known bucket is full again: the same as none
    assert limiter.acquire("new-0") == 0.0 and limiter.clients == 1


def test_idle_buckets_are_dropped_oldest_first_and_only_when_full() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(rpm=60, burst=2, clock=clock)
    limiter.acquire("old")
    clock.now += 1.5
    limiter.acquire("recent")
    clock.now += 0.6  # "old" is full again (2.1 s > 2 s), "recent" is not (0.6 s)
    limiter.acquire("third")
    assert limiter.clients == 2
    assert limiter.wait_s("recent") == 0.0 and limiter.acquire("recent") == 0.0
    assert limiter.acquire("recent") > 0


def test_wait_s_looks_without_taking_or_adding() -> None:
    limiter = TokenBucketLimiter(rpm=60, burst=1, clock=FakeClock())
    assert limiter.wait_s("x") == 0.0 and limiter.clients == 0
    limiter.acquire("x")
    assert limiter.wait_s("x") == pytest.approx(1.0)
    assert limiter.wait_s("x") == pytest.approx(1.0)  # looking twice takes nothing


@pytest.mark.parametrize(
    ("header", "name"),
    [
        (b"127.0.0.1:8000", "127.0.0.1"),
        (b"LocalHost", "localhost"),
        (b"[::1]:8000", "::1"),
        (b"[::1]", "::1"),
        (b"box.lan:80", "box.lan"),
        (b"a:b:c", None),
        (b"host:", None),
        (b"[::1]x", None),
        (b"", None),
        (None, None),
    ],
)
def test_host_name_of_a_header(header: bytes | None, name: str | None) -> None:
    assert host_name(header) == name


def test_allowed_names_are_localhost_the_bound_host_and_the_configured_ones() -> None:
    names = allowed_host_names("MyBox.lan", ("extra.lan",))
    assert names == {"localhost", "mybox.lan", "extra.lan"}
    assert host_allowed(b"192.168.1.5:8000", names)  # an IP literal is never a rebinding
    assert not host_allowed(b"evil.example", names)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (" \n", "the API key is empty"),
        ("a" * 513, "longer than 512"),
        ("two words", "visible ASCII"),
        ("clé", "visible ASCII"),
    ],
)
def test_keys_no_client_could_send_are_refused(key: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ServerOptions(api_key=key)


def test_the_configured_key_is_normalized_once() -> None:
    assert ServerOptions(api_key="  k-1\n").key == "k-1"


@pytest.mark.parametrize("host", ["box.lan:80", "http://box.lan", "a b", "-x"])
def test_allowed_hosts_are_bare_names(host: str) -> None:
    with pytest.raises(ValidationError, match="is not a host name"):
        ServerOptions(allowed_hosts=(host,))
    assert ServerOptions(allowed_hosts=(" Box.LAN ",)).allowed_hosts == ("box.lan",)
