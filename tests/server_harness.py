"""A real `python -m engine serve` child process on loopback, for the server tests;
and `in_process_server` for tests that hand the app their own load function.

Like vLLM's `RemoteOpenAIServer`: pick a free port, start the child, poll
`/health` with a deadline, fail at once (with the log tail) if the child
dies, and on teardown terminate, then kill. fp32 weights, so a batched
greedy decode equals the same request run alone. Servers run `--eager`
unless a test asks for the compiled default: the suite's cache starts
empty, and a cold build of the compiled decode step costs about a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import openai
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from checks.load.targets import free_port, wait_healthy
from engine.serving.options import ServerOptions

if TYPE_CHECKING:
    from engine.run.runtime import Engine

REPO = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
START_DEADLINE_S = 180.0


class RemoteServer:
    """One server child; `url`, `headers`, `client()` and `metric()` for the tests."""

    def __init__(
        self, args: Sequence[str], log_path: Path, api_key: str | None = "test-key", eager: bool = True
    ) -> None:
        self.port = free_port()
        self.api_key = api_key
        self.log_path = log_path
        # One torch thread: on a shared 2-core machine, two spinning OpenMP threads per server
        # (and one more in pytest) make every step 10-20x slower.
        cmd = [
            sys.executable,
            "-m",
            "engine",
            "serve",
            "--port",
            str(self.port),
            "--device",
            "cpu",
            "--threads",
            "1",
            *(["--eager"] if eager else []),
            *args,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("PREFLIGHT_API_KEY", None)
        if api_key is not None:
            env["PREFLIGHT_API_KEY"] = api_key  # not on the command line: keys stay out of `ps`
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log_tail(self, n: int = 40) -> str:
        self._log.flush()
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def wait_ready(self, deadline_s: float = START_DEADLINE_S) -> None:
        wait_healthy(self.url, self.proc.poll, deadline_s, "the server", self.log_tail)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "none", max_retries=0, timeout=60)

    def post(self, path: str, body: dict, timeout: float | httpx.Timeout = 60) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=self.headers, timeout=timeout)

    def metrics(self) -> dict[str, float]:
        """Sample name (with labels other than model_name) -> value, from GET /metrics."""
        r = httpx.get(self.url + "/metrics", headers=self.headers, timeout=10)
        r.raise_for_status()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(r.text):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "model_name")
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def wait_metric(self, name: str, predicate: object, deadline_s: float = 10.0) -> float:
        end = time.monotonic() + deadline_s
        value = float("nan")
        while time.monotonic() < end:
            value = self.metrics().get(name, float("nan"))
            if predicate(value):  # type: ignore[operator]
                return value
            time.sleep(0.05)
        raise AssertionError(f"{name} stayed at {value} for {deadline_s} s")


def start_server(
    args: Sequence[str], log_path: Path, api_key: str | None = "test-key", eager: bool = True
) -> RemoteServer:
    server = RemoteServer(args, log_path, api_key, eager)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def sse_events(lines: Iterator[str]) -> Iterator[dict | str]:
    """Parsed `data:` payloads of an SSE stream; the string "[DONE]" ends it."""
    for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            yield data
            return
        yield json.loads(data)


def stream_text(events: list[dict | str], chat: bool) -> str:
    parts = []
    for e in events:
        if isinstance(e, dict):
            for c in e.get("choices", []):
                parts.append((c["delta"].get("content") or "") if chat else c["text"])
    return "".join(parts)


class BlockedLoad:
    """Stands in for Engine.load: waits for `release`, then fails like a broken model file would.

    Until then the server answers every route but the model's, with no model loaded.
    """

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self) -> Engine:
        if not self.release.wait(60):
            raise TimeoutError("the test never released the load")
        raise RuntimeError("cannot read /secret/models/broken.gguf")


@contextmanager
def in_process_server(app: object, options: ServerOptions | None = None) -> Iterator[tuple[str, threading.Thread]]:
    """Run an ASGI app under a real uvicorn on a free loopback port in a thread; yields (base URL, thread).

    With `options`, uvicorn is configured as `python -m engine serve` configures it (connection
    limit included). Returns once uvicorn listens (the app's own load may still be running: poll /health).
    """
    port = free_port()
    if options is not None:
        from engine.serving.app import uvicorn_config  # torch and FastAPI: only for the tests that run an app

        config = uvicorn_config(app, options.model_copy(update={"host": "127.0.0.1", "port": port}))  # type: ignore[arg-type]
    else:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("in-process server did not start")
        time.sleep(0.05)  # the poll interval of a bounded wait
    try:
        yield f"http://127.0.0.1:{port}", thread
    finally:
        server.should_exit = True
        thread.join(30)
