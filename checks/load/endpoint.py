"""`Endpoint`: where the load goes and what that server can do, as the targets found out.

A target (bundled or remote) ends its start-up probe with an Endpoint; the client and
the load generator only ever see this. The API key never appears in `repr` or in
`redacted()`, which is what reports store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from reports.benchmark_result import EndpointDoc

Api = Literal["chat", "completions"]
API_PATHS: dict[str, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An OpenAI-compatible server, its model and API kind, and the request options it accepts."""

    base_url: str
    model: str
    api: Api = "chat"
    api_key: str | None = field(default=None, repr=False)
    supports_ignore_eos: bool = True  # vLLM, llama.cpp and our engine do; OpenAI itself rejects it
    supports_stream_usage: bool = True  # stream_options.include_usage
    request_timeout_s: float = 600.0
    server_pid: int | None = None  # the bundled server's process, for the resource timeline

    def __post_init__(self) -> None:
        if self.api not in API_PATHS:
            raise ValueError(f"api must be one of {', '.join(API_PATHS)}, got {self.api!r}")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base URL {self.base_url!r} must start with http:// or https://")
        if self.request_timeout_s <= 0:
            raise ValueError("request_timeout_s must be positive")

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
