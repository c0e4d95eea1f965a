"""`Endpoint`: where the load goes and what that server can do, as the targets found out.

A target (bundled or remote) ends its start-up probe with an Endpoint; the client and
the load generator only ever see this. The API key never appears in `repr` or in
`redacted()`, which is what reports store. `check_target_url` is the one rule for a
target URL, shared by the CLI, the dashboard (both through `BenchmarkConfig`) and the
Endpoint itself: a key goes in the API-key field, never inside the URL.

Proxies: Preflight connects to every target directly and ignores the HTTP(S)_PROXY
variables, in the health poll, the probe and the load alike (aiohttp's default; the
urllib health poll is told so). A proxy in the path would be part of every latency.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from checks.load.sse import MAX_EVENT_BYTES, MAX_RESPONSE_BYTES
from reports.benchmark_result import EndpointDoc
from reports.redaction import redact_url

Api = Literal["chat", "completions"]
API_PATHS: dict[str, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
READ_TIMEOUT_S = 300.0  # no byte for this long ends a request; a queued request on a busy CPU server waits minutes


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An OpenAI-compatible server, its model and API kind, and the request options it accepts."""

    base_url: str
    model: str
    _: KW_ONLY  # where and which model read naturally in order; every other option is named
    api: Api = "chat"
    api_key: str | None = field(default=None, repr=False)
    supports_ignore_eos: bool = True  # vLLM, llama.cpp and our engine do; OpenAI itself rejects it
    supports_stream_usage: bool = True  # stream_options.include_usage
    request_timeout_s: float = 600.0
    server_pid: int | None = None  # the bundled server's process, for the resource timeline
    read_timeout_s: float = READ_TIMEOUT_S  # longest wait for the next bytes of an answer
    max_event_bytes: int = MAX_EVENT_BYTES  # longest SSE line or event a stream may send
    max_response_bytes: int = MAX_RESPONSE_BYTES  # most bytes one streamed answer may send

    def __post_init__(self) -> None:
        if self.api not in API_PATHS:
            raise ValueError(f"api must be one of {', '.join(API_PATHS)}, got {self.api!r}")
        check_target_url(self.base_url)
        if self.request_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("request_timeout_s and read_timeout_s must be positive")
        if self.max_event_bytes < 1 or self.max_response_bytes < 1:
            raise ValueError("max_event_bytes and max_response_bytes must be at least 1")

    @property
    def url(self) -> str:
        """The URL requests are POSTed to."""
        return root_url(self.base_url) + API_PATHS[self.api]

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def redacted(self) -> EndpointDoc:
        """What a report may keep: everything but the key (and the URL's userinfo and query), and whether a key
        was set."""
        return EndpointDoc(
            base_url=self.base_url,
            model=self.model,
            api=self.api,
            api_key_set=bool(self.api_key),
            supports_ignore_eos=self.supports_ignore_eos,
            supports_stream_usage=self.supports_stream_usage,
        )


def root_url(base_url: str) -> str:
    """The server root: users paste `http://host:8000`, `.../v1` or `.../v1/`; all mean the same server."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def check_target_url(url: str) -> str:
    """`url` if it can be a target; ValueError saying what to change otherwise.

    Only http(s) with a host. No userinfo, query string or fragment: gateways take keys
    in the first two, results store URLs without them (`redact_url`), and the API paths
    are appended to the URL, which a query or fragment would swallow. The message shows
    the URL redacted, so a key typed into it is not echoed.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check: "host:99999" or "host:x" raise here
    except ValueError as exc:  # the URL is not shown: unparsed, its key could not be cut out
        raise ValueError(f"the target URL is not a valid URL: {exc}") from None
    shown = redact_url(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"target URL {shown!r} must be http:// or https:// and name a host")
    if "@" in parts.netloc:
        raise ValueError(
            f"target URL {shown!r} holds a user name or key before '@': remove it and pass the key with --api-key "
            "(or the API key field)"
        )
    if "?" in url:
        raise ValueError(
            f"target URL {shown!r} has a query string ('?...'): remove it; a key goes in --api-key (or the API key "
            "field), and the API paths are appended to the URL"
        )
    if "#" in url:
        raise ValueError(f"target URL {shown!r} has a fragment ('#...'): remove it")
    return url
