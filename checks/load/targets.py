"""Targets: the bundled engine server (started here) or any remote OpenAI-compatible endpoint.

Either one ends in an `Endpoint` only after a probe has shown it works: `/v1/models`
answers (and names the model when none was given) and one tiny streaming request
comes back as well-formed SSE with content. A target that is down, refuses the key,
has no such route or model, or streams garbage is a `TargetError` with a message
that says what to fix, before any load is sent. The probe also finds out whether
the server accepts `ignore_eos` and `stream_options` (OpenAI itself rejects both).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from checks.load.client import StreamClient, body_excerpt, read_body
from checks.load.endpoint import Api, Endpoint, root_url
from checks.load.prompts import PromptRequest
from reports.benchmark_result import BundledTargetDoc, RemoteTargetDoc
from reports.home import open_private, private_dir, prune
from reports.records import ErrorKind, RequestRecord

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_DIR = "logs"  # the bundled server's logs: a private folder under reports.home.preflight_home()
PROBE_TIMEOUT_S = 60.0
STARTUP_TIMEOUT_S = 300.0  # an eager bundled server: load only
COMPILE_STARTUP_TIMEOUT_S = 900.0  # compiled (the default): a cold build takes minutes on 2 cores, more when busy
HEALTH_BODY_BYTES = 4096  # the start of a 503 /health body read for its "still loading: ..." message
HEALTH_POLL_S = 0.25
MODEL_LIST_BYTES = 4 * 2**20  # a /v1/models answer larger than this is not a model list
# The health poll ignores HTTP(S)_PROXY as aiohttp (probe and load) does: one rule, see checks/load/endpoint.py.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PROBE_PROMPT = PromptRequest("Say hello.", None, max_tokens=4, input_tokens=None, ignore_eos=True, source="probe")


class TargetError(Exception):
    """The target cannot be benchmarked; the message says why and what to do."""


class TargetCancelled(TargetError):
    """The user stopped the run before the target was ready: nothing was measured, nothing went wrong."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BundledOptions:
    """How to start the bundled engine server (`python -m engine serve`)."""

    quant: str = "int4"
    device: str = "cpu"
    threads: int | None = None
    max_num_seqs: int = 16
    api: Api = "chat"
    eager: bool = False  # --eager: skip the compiled decode step (the server's default wherever it works)
    extra_args: tuple[str, ...] = ()
    startup_timeout_s: float | None = None  # None: STARTUP_TIMEOUT_S eager, COMPILE_STARTUP_TIMEOUT_S compiled
    weights_dir: str | None = None  # serve a compressed weights directory (its format is `quant`)
    log_dir: Path | None = None  # where the server log is kept (default: LOG_DIR under Preflight's home, pruned)
    keep_logs: int = 20  # server logs kept in the default log folder; older ones are deleted at each start


def _signal_group(pgid: int, sig: int) -> None:
    """Signal the process group the bundled server leads; one that has already ended is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(
    base_url: str,
    exit_code: Callable[[], int | None],
    deadline_s: float,
    what: str,
    log_tail: Callable[[], str],
    path: str = "/health",
    cancel: threading.Event | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> None:
    """Poll `base_url + path` until 200; TargetError at once if the server ends or `cancel` is set,
    or at the deadline. `on_wait` hears each new message of the 503 answers (our server's says what
    it is doing: loading, building the compiled decode step).

    `exit_code` says whether the server has ended (a child's `Popen.poll`, or a check on
    an in-process server's thread). Both errors carry the server's last log lines: a
    server that cannot start says why there. A Stop pressed while a server starts
    (a cold build of the compiled decode step takes minutes) ends the wait at once: `TargetCancelled`.
    """
    deadline = time.monotonic() + deadline_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if cancel is not None and cancel.is_set():
            raise TargetCancelled(f"stopped while waiting for {what} to be ready")
        code = exit_code()
        if code is not None:
            raise TargetError(f"{what} exited ({code}) while starting:\n{log_tail()}")
        try:
            with _DIRECT.open(base_url + path, timeout=2.0) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            message = _error_message(exc)
            now = f"HTTP {exc.code}" + (f": {message}" if message else "")
            if on_wait is not None and message and now != last:
                on_wait(message)
            last = now
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        if cancel is not None:
            cancel.wait(HEALTH_POLL_S)  # the poll interval of a bounded wait; a Stop ends it early
        else:
            time.sleep(HEALTH_POLL_S)  # the poll interval of a bounded wait, not a stand-in for work
    raise TargetError(f"{what} was not ready within {deadline_s:g} s (last: {last}):\n{log_tail()}")


def _error_message(exc: urllib.error.HTTPError) -> str | None:
    """The OpenAI-style `error.message` of an error answer, or None (a server that says nothing, or not JSON)."""
    try:
        message = json.loads(exc.read(HEALTH_BODY_BYTES))["error"]["message"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return message[:300] if isinstance(message, str) else None


def read_health(base_url: str) -> dict[str, Any]:
    """GET /health's JSON body once the server is ready (our server says how it decodes there); {} otherwise."""
    try:
        with _DIRECT.open(base_url + "/health", timeout=5.0) as resp:
            data = json.loads(resp.read(HEALTH_BODY_BYTES))
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_ids(data: Any) -> list[str]:
    """The model ids of a parsed OpenAI `/v1/models` answer; KeyError or TypeError when it is not one."""
    return [str(m["id"]) for m in data["data"]]


async def _get_models(base_url: str, api_key: str | None) -> list[str]:
    url = root_url(base_url) + "/v1/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url, headers=headers) as resp:
            body = await read_body(resp, MODEL_LIST_BYTES + 1)
            status, content_type = resp.status, resp.content_type
    except TimeoutError:
        raise TargetError(f"{url} did not answer within {PROBE_TIMEOUT_S:g} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        hint = "check the URL and that the server runs"
        raise TargetError(f"cannot connect to {root_url(base_url)}: {exc}; {hint}") from None
    if status in (401, 403):
        what = "no API key was given" if not api_key else "the API key was refused"
        raise TargetError(f"{url} answered HTTP {status}: {what}; pass the endpoint's key with --api-key")
    if status == 404:
        raise TargetError(f"{url} answered HTTP 404: is {base_url} the base URL of an OpenAI-compatible server?")
    if status != 200:
        raise TargetError(f"{url} answered HTTP {status}: {body_excerpt(body, content_type)}")
    if len(body) > MODEL_LIST_BYTES:
        raise TargetError(f"{url} answered with more than {MODEL_LIST_BYTES} bytes: not an OpenAI model list")
    try:
        return model_ids(json.loads(body))
    except (ValueError, KeyError, TypeError, RecursionError):
        detail = body_excerpt(body, content_type)
        raise TargetError(f"{url} did not answer with an OpenAI model list: {detail}") from None


async def _probe_stream(endpoint: Endpoint) -> RequestRecord:
    async with StreamClient(replace(endpoint, request_timeout_s=PROBE_TIMEOUT_S), time.perf_counter()) as client:
        return await client.send(0, PROBE_PROMPT, 0.0)


def _rejects_option(record: RequestRecord, option: str) -> bool:
    return record.http_status in (400, 422) and option in (record.error_excerpt or "")


async def probe(base_url: str, api_key: str | None, model: str | None, api: Api, server_pid: int | None) -> Endpoint:
    """Check the endpoint end to end and return what it supports; TargetError otherwise."""
    endpoint, _record = await probe_stream(base_url, api_key, model, api, server_pid)
    return endpoint


async def probe_stream(
    base_url: str,
    api_key: str | None,
    model: str | None,
    api: Api,
    server_pid: int | None = None,
    models: list[str] | None = None,
) -> tuple[Endpoint, RequestRecord]:
    """`probe`, also returning the record of the last (successful) probe request: its timings.

    `models`: the model list when the caller has just fetched it (a connection test), so it is not asked twice."""
    if models is None:
        models = await _get_models(base_url, api_key)
    if model is None:
        if not models:
            raise TargetError(f"{root_url(base_url)}/v1/models lists no models; name one with --model")
        model = models[0]
    elif models and model not in models:
        raise TargetError(f"model {model!r} is not served at {base_url}; it serves: {', '.join(models)}")
    endpoint = Endpoint(base_url, model, api=api, api_key=api_key, server_pid=server_pid)
    record = await _probe_stream(endpoint)
    if _rejects_option(record, "ignore_eos"):
        endpoint = replace(endpoint, supports_ignore_eos=False)
        record = await _probe_stream(endpoint)
    if _rejects_option(record, "stream_options"):
        endpoint = replace(endpoint, supports_stream_usage=False)
        record = await _probe_stream(endpoint)
    if not record.ok:
        raise TargetError(_probe_failure(endpoint, record))
    return endpoint, record


def _probe_failure(endpoint: Endpoint, record: RequestRecord) -> str:
    where = f"the probe request to {endpoint.url}"
    detail = record.error_excerpt or ""
    if record.error_kind == ErrorKind.HTTP:
        if record.http_status in (401, 403):
            what = "no API key was given" if not endpoint.api_key else "the API key was refused"
            hint = "pass the endpoint's key with --api-key"
            return f"{where} answered HTTP {record.http_status}: {what}; {hint} ({detail})"
        if record.http_status == 404:
            return f"{where} answered HTTP 404: no {endpoint.api} API there? try --api completions|chat ({detail})"
        return f"{where} answered HTTP {record.http_status}: {detail}"
    return f"{where} failed ({record.error_kind}): {detail}"


@dataclass(slots=True)
class RemoteTarget:
    """Any OpenAI-compatible endpoint (vLLM, TGI, llama.cpp, Ollama, a gateway); nothing is started."""

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    model: str | None = None
    api: Api = "chat"

    def connect(self) -> Endpoint:
        return asyncio.run(probe(self.base_url, self.api_key, self.model, self.api, None))

    def __enter__(self) -> Endpoint:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        return None

    def describe(self) -> RemoteTargetDoc:
        """What a result keeps: the URL as redact_url shows it, and whether a key was set."""
        return RemoteTargetDoc(base_url=self.base_url, model=self.model, api=self.api, api_key_set=bool(self.api_key))


class BundledTarget:
    """`python -m engine serve` on 127.0.0.1, a free port and a generated key; stopped on exit.

    The key travels in the child's environment, never on its command line (`ps` shows
    that). The server's log is kept in `log_path` for the report: by default in the
    private `logs` folder of Preflight's home (0700, the file 0600, the newest
    `keep_logs` kept), never in a shared temp folder.

    The server runs in its own process group (session), so a Ctrl-C meant for the
    caller's terminal does not reach it, and stopping it reaches whatever it started
    (Inductor's compile workers): SIGTERM to the group, a wait for the graceful
    shutdown, then SIGKILL. It gets `--parent-pid` with this process's pid, so it stops
    itself if this process dies without stopping it (see engine/serving/parent_watch.py).
    `cancel`, when set, ends the wait for the server's /health early.
    """

    def __init__(
        self,
        options: BundledOptions | None = None,
        cancel: threading.Event | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self.options = options or BundledOptions()
        self.cancel = cancel
        self.on_status = on_status
        self.health: dict[str, Any] = {}  # /health's answer once ready: how the server decodes
        self.api_key = secrets.token_urlsafe(24)
        self.port = free_port()
        if self.options.log_dir is not None:
            log_dir = self.options.log_dir
            log_dir.mkdir(parents=True, exist_ok=True)
        else:
            log_dir = private_dir(LOG_DIR)
            prune(log_dir, "engine-serve-*.log", keep=max(0, self.options.keep_logs - 1))  # room for this one
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.log_path = log_dir / f"engine-serve-{stamp}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        o = self.options
        cmd = [
            sys.executable,
            "-m",
            "engine",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *(["--weights", o.weights_dir] if o.weights_dir is not None else ["--quant", o.quant]),
            "--device",
            o.device,
            "--max-num-seqs",
            str(o.max_num_seqs),
            "--parent-pid",
            str(os.getpid()),
        ]
        if o.threads is not None:
            cmd += ["--threads", str(o.threads)]
        if o.eager:
            cmd.append("--eager")
        return cmd + list(o.extra_args)

    def start(self) -> Endpoint:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PREFLIGHT_API_KEY=self.api_key)
        with os.fdopen(open_private(self.log_path), "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            self._wait_healthy()
            self.health = read_health(self.base_url)
            return asyncio.run(probe(self.base_url, self.api_key, None, self.options.api, self.proc.pid))
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        if self.proc is None:
            raise TargetError("the bundled server was not started")
        o = self.options
        deadline = o.startup_timeout_s or (STARTUP_TIMEOUT_S if o.eager else COMPILE_STARTUP_TIMEOUT_S)
        status = self.on_status
        wait_healthy(
            self.base_url,
            self.proc.poll,
            deadline,
            "the bundled server",
            self.log_tail,
            cancel=self.cancel,
            on_wait=None if status is None else lambda message: status(f"the bundled server: {message}"),
        )

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"

    def stop(self, grace_s: float = 20.0) -> int | None:
        """Stop the server's process group and return the server's exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        _signal_group(proc.pid, signal.SIGKILL)  # anything the server started and left behind
        return proc.returncode

    def __enter__(self) -> Endpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> BundledTargetDoc:
        o = self.options
        return BundledTargetDoc(
            quant=o.quant,
            weights_dir=o.weights_dir,
            device=o.device,
            threads=o.threads,
            max_num_seqs=o.max_num_seqs,
            api=o.api,
            log_path=str(self.log_path),
            decode=decode if (decode := self.health.get("decode")) in ("compiled", "eager") else None,
            eager_reason=str(reason)[:500] if (reason := self.health.get("eager_reason")) else None,
        )
