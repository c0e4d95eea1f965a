"""'Test connection': what a target offers before anything is measured on it.

The target picker and `python -m checks connect` ask the endpoint four things, each a
real request with a deadline: which models it lists (and how fast), whether it wants the
key and takes it, whether one short streamed request works (with its time to first
token, and whether the server reports usage in the stream and honours `ignore_eos`), and
which `/metrics` dialect it speaks. Every step that fails says why in words and the
steps after it say they were not tried; nothing here raises for what a server does.

The key is used, never shown: the report holds only whether one was given and what the
server made of it.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from checks.load.endpoint import Api, Endpoint, check_target_url, root_url
from checks.load.targets import TargetError, model_ids, probe_stream
from checks.presets import preset_for
from checks.readiness.metrics_scrape import read_target_metrics
from checks.readiness.probe import ProbeResponse, request
from reports.redaction import redact_url

CONNECT_TIMEOUT_S = 10.0
Auth = Literal["not required", "required and accepted", "required: no key was given", "refused", "unknown"]


class ConnectionReport(BaseModel):
    """What `check_connection` found; every figure measured now, None where a step was not reached."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="the target, as redact_url shows it")
    reachable: bool
    models: list[str] = Field(default_factory=list)
    models_ms: float | None = Field(None, description="GET /v1/models round trip")
    auth: Auth = "unknown"
    key_given: bool
    model: str | None = Field(None, description="the model the probe request used")
    streaming: bool | None = Field(None, description="one short streamed request completed")
    ttft_ms: float | None = Field(None, description="time to the first streamed token of that request")
    stream_usage: bool | None = Field(None, description="the server reports token usage in the stream")
    ignore_eos: bool | None = Field(None, description="the server accepts ignore_eos (exact output lengths)")
    metrics: str | None = Field(None, description="the /metrics dialect found (vllm, sglang, tgi, ...)")
    server: str | None = Field(None, description="the server this looks like, from its /metrics names")
    metrics_note: str | None = Field(None, description="why /metrics is not usable, or what it lacks")
    problems: list[str] = Field(default_factory=list, description="what stops a benchmark or a checklist, in words")

    @property
    def ok(self) -> bool:
        """Ready to measure: reachable, authorised and one streamed request worked."""
        return self.reachable and bool(self.streaming) and not self.problems


def _auth(with_key: ProbeResponse, without_key: ProbeResponse | None, key_given: bool) -> Auth:
    if with_key.status in (401, 403):
        return "refused" if key_given else "required: no key was given"
    if with_key.status != 200:
        return "unknown"
    if not key_given:
        return "not required"
    return "required and accepted" if without_key is not None and without_key.status in (401, 403) else "not required"


async def check_connection(
    base_url: str, api_key: str | None = None, model: str | None = None, api: Api = "chat"
) -> ConnectionReport:
    """Ask the target the questions of the module docstring; raises only ValueError for a bad URL."""
    check_target_url(base_url)
    report = ConnectionReport(base_url=redact_url(base_url), reachable=False, key_given=bool(api_key))
    where = Endpoint(base_url, model or "", api=api, api_key=api_key)
    listed = await request(where, "GET", "/v1/models", timeout_s=CONNECT_TIMEOUT_S)
    if listed.status is None:
        report.problems.append(f"cannot reach {root_url(base_url)}: {listed.error}; check the URL and that it runs")
        return report
    report.reachable, report.models_ms = True, listed.elapsed_s * 1000
    anonymous = await request(where, "GET", "/v1/models", auth="none", timeout_s=CONNECT_TIMEOUT_S) if api_key else None
    report.auth = _auth(listed, anonymous, bool(api_key))
    if report.auth in ("refused", "required: no key was given"):
        what = "the key was refused" if api_key else "it needs an API key"
        report.problems.append(f"GET /v1/models answered {listed.status}: {what}")
        return report
    if listed.status == 200:
        try:
            report.models = model_ids(listed.json())
        except (KeyError, TypeError):
            report.problems.append("GET /v1/models did not answer with an OpenAI model list")
    else:
        report.problems.append(f"GET /v1/models answered {listed.status}: is {base_url} an OpenAI-compatible base URL?")
    if not report.problems:
        try:
            endpoint, record = await probe_stream(base_url, api_key, model, api, models=report.models)
        except TargetError as exc:
            report.streaming = False
            report.problems.append(str(exc))
        else:
            report.model, report.streaming = endpoint.model, True
            report.stream_usage, report.ignore_eos = endpoint.supports_stream_usage, endpoint.supports_ignore_eos
            report.ttft_ms = None if record.ttft_s is None else record.ttft_s * 1000
    metrics = await read_target_metrics(where, timeout_s=CONNECT_TIMEOUT_S)
    if metrics.reading is not None and metrics.reading.source is not None:
        report.metrics = metrics.reading.source
        preset = preset_for(metrics.reading.source)
        report.server = preset.name if preset is not None else "Preflight's bundled engine"
        missing = metrics.reading.missing()
        report.metrics_note = f"not exported: {', '.join(missing)}" if missing else None
    else:
        report.metrics_note = metrics.problem
    return report


def connect(base_url: str, api_key: str | None = None, model: str | None = None, api: Api = "chat") -> ConnectionReport:
    """`check_connection` from synchronous code (the CLI, a page)."""
    return asyncio.run(check_connection(base_url, api_key, model, api))


def facts(report: ConnectionReport) -> list[tuple[str, str]]:
    """What a reachable target answered, as (label, text) lines: the CLI prints them as a column, the
    sidebar as a list, so both say the same thing the same way."""
    if not report.reachable:
        return []

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f} ms"

    def yes(value: bool | None) -> str:
        return "not tried" if value is None else "yes" if value else "no"

    shown = ", ".join(report.models[:5]) + (f" (+{len(report.models) - 5})" if len(report.models) > 5 else "")
    metrics = report.metrics or "not usable"
    metrics += (f" ({report.server})" if report.server else "") + (
        f"; {report.metrics_note}" if report.metrics_note else ""
    )
    return [
        ("models", f"{shown or 'none listed'} in {ms(report.models_ms)}"),
        ("API key", f"{report.auth} (a key was {'given' if report.key_given else 'not given'})"),
        (
            "streaming",
            yes(report.streaming) + (f" ({report.model}, TTFT {ms(report.ttft_ms)})" if report.streaming else ""),
        ),
        ("stream usage", yes(report.stream_usage)),
        ("ignore_eos", yes(report.ignore_eos)),
        ("/metrics", metrics),
    ]


def format_connection(report: ConnectionReport) -> str:
    """The report as lines for a terminal: one fact per line, problems last."""
    lines = [f"target        {report.base_url}", f"reachable     {'yes' if report.reachable else 'no'}"]
    lines += [f"{label:<14}{text}" for label, text in facts(report)]
    lines += [f"problem       {p}" for p in report.problems]
    lines.append("ready to measure" if report.ok else "not ready to measure")
    return "\n".join(lines)
