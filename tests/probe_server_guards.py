"""Probe for issue 16 items 3 and 4 against a real `python -m engine serve`; prints the figures of
docs/SECURITY.md. Not a test (pytest does not collect it): run `python tests/probe_server_guards.py`.

It uses only flags that predate the fix, so the same script measures before and after:
1. a key configured with a trailing newline: does the right key get in?
2. 100 wrong keys from one address: how many are answered 401 (a guess checked) and how many 429?
3. with a key and `--rate-limit 6 --rate-limit-burst 5`: after 127.0.0.1 spends its burst,
   is 127.0.0.2 (same key) served?
4. without a key: a request whose Host is a rebinding domain.
5. without a key: N connections each sending 1 MiB - 1 byte of a 1 MiB body and holding it;
   the server's RSS growth and how many were refused with 503.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
HELD_CONNECTIONS = int(os.environ.get("PROBE_CONNECTIONS", "600"))
BODY_BYTES = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(key: str | None, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFLIGHT_API_KEY"}
    if key is not None:
        env["PREFLIGHT_API_KEY"] = key
    cmd = [
        sys.executable,
        "-m",
        "engine",
        "serve",
        "--port",
        str(port),
        "--quant",
        "fp32",
        "--device",
        "cpu",
        "--threads",
        "1",
        *args,
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # /version answers as soon as uvicorn listens
        try:
            httpx.get(url + "/version", timeout=2)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def probe_keys() -> None:
    proc, url = start("probe-key\n")
    try:
        print(
            f"1. key configured as 'probe-key\\n', client sends 'probe-key': "
            f"{httpx.get(url + '/version', headers=bearer('probe-key')).status_code}"
        )
    finally:
        stop(proc)
    proc, url = start("probe-key", "--rate-limit", "6", "--rate-limit-burst", "5")
    try:
        with httpx.Client() as one:
            statuses = [one.get(url + "/version", headers=bearer("probe-key")).status_code for _ in range(8)]
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as other:
            second = other.get(url + "/version", headers=bearer("probe-key")).status_code
        print(f"3. rate limit with a key: 127.0.0.1 got {statuses}; then 127.0.0.2 got {second}")
        with httpx.Client() as guesser:
            guesses = [guesser.get(url + "/version", headers=bearer(f"guess-{i}")).status_code for i in range(100)]
        print(f"2. 100 wrong keys from one address: {guesses.count(401)} answered 401, {guesses.count(429)} 429")
    finally:
        stop(proc)


def hold(url: str) -> socket.socket | None:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {BODY_BYTES}\r\n\r\n"
    ).encode()
    try:
        sock.sendall(head + b"x" * (BODY_BYTES - 1))
    except OSError:  # refused with 503 and closed while we were still sending
        sock.close()
        return None
    return sock


def answered_503(sock: socket.socket) -> bool:
    sock.settimeout(0.2)
    try:
        return sock.recv(64).startswith(b"HTTP/1.1 503")
    except OSError:  # no answer yet: the request was admitted and its body is being held
        return False


def probe_open_server() -> None:
    proc, url = start(None)
    try:
        r = httpx.get(url + "/version", headers={"Host": "rebind.attacker.example"})
        print(f"4. no key, Host: rebind.attacker.example -> {r.status_code}")
        time.sleep(5)  # let the background model load settle before measuring memory
        before = rss_mib(proc.pid)
        held = [hold(url) for _ in range(HELD_CONNECTIONS)]
        time.sleep(2)
        grown = rss_mib(proc.pid) - before
        refused = sum(sock is None or answered_503(sock) for sock in held)
        print(
            f"5. {HELD_CONNECTIONS} connections holding 1 MiB - 1 byte each: server RSS +{grown:.0f} MiB, "
            f"{refused} refused with 503"
        )
        for sock in held:
            if sock is not None:
                sock.close()
    finally:
        stop(proc)


if __name__ == "__main__":
    probe_keys()
    probe_open_server()
