"""Monitoring checks: can an orchestrator and an on-call engineer see what the server is doing?

- `monitoring.health`: `/health` answers, and its 200 means "serving". Judged black-box:
  a 1-token generation must agree with it. vLLM, llama.cpp's server and TGI all have
  `/health`; NIM and KServe's `/v1/health/ready` and `/v2/health/ready` are tried when
  it is missing. A 200 while generation answers 503 ("loading") is the fault that sends
  traffic to a replica that cannot serve it; a 429, or a 503 that names capacity, is load,
  not readiness, and leaves the line ERROR (not judged) rather than a false FAIL.
- `monitoring.metrics`: `/metrics` parses as Prometheus text and holds latency (TTFT and
  E2E histograms), token (prompt and generation counters) and queue (running and waiting
  gauges) metrics, named in a dialect `checks.readiness.metrics_names` knows. Read with
  the key; whether it also answers without one goes into the evidence only (exposure is
  the security checks' line, not repeated here).
- `monitoring.metrics_timeline`: the `/metrics` timeline scraped during the benchmark
  (`ctx.scratch["metrics_timeline"]`, put there by the runner around the load) has
  samples, and the server's counters moved with the load.
"""

from __future__ import annotations

from checks.readiness.check import Check, CheckContext
from checks.readiness.metrics_scrape import TIMELINE_KEY, read_target_metrics
from checks.readiness.probe import ProbeResponse, request, tiny_request
from reports.check_result import Category, CheckResult, CheckStatus
from reports.metrics_timeline import MetricsTimeline

HEALTH_PATHS = ("/health", "/v1/health/ready", "/v2/health/ready")
HEALTH_TIMEOUT_S = 10.0
PROBE_DEFAULT_TIMEOUT_S = 1.0  # Kubernetes' default timeoutSeconds for a probe
GENERATION_TIMEOUT_S = 60.0
MAX_SCRAPE_FAILURES = 0.1  # a larger share of failed scrapes leaves gaps a dashboard would show
BUSY_WORDS = ("capacity", "queue", "overload", "busy", "rate limit")
METRIC_GROUPS = {
    "latency (TTFT and E2E histograms)": ("ttft_seconds", "e2e_seconds"),
    "tokens (prompt and generation counters)": ("prompt_tokens_total", "generation_tokens_total"),
    "queue (running and waiting gauges)": ("running", "waiting"),
}


def _busy(resp: ProbeResponse) -> bool:
    """A refusal for load, not readiness (429, or a 503 that names capacity): health 200 is then right."""
    text = resp.text.lower()
    return resp.status == 429 or (resp.status == 503 and any(w in text for w in BUSY_WORDS) and "loading" not in text)


def _not_ready(resp: ProbeResponse) -> bool:
    """A generation answer that means "the model is not loaded yet" (503, or a body that says loading)."""
    return resp.status == 503 or (resp.status is not None and resp.status >= 400 and "loading" in resp.text.lower())


def _completion(resp: ProbeResponse) -> bool:
    body = resp.json()
    return resp.status == 200 and isinstance(body, dict) and bool(body.get("choices"))


async def _find_health(ctx: CheckContext, evidence: list[str]) -> ProbeResponse | None:
    """The first health route that exists (asked without a key, as a load balancer would); None: none exists."""
    for path in HEALTH_PATHS:
        resp = await request(ctx.endpoint, "GET", path, auth="none", timeout_s=HEALTH_TIMEOUT_S)
        evidence.append(resp.evidence())
        if resp.status in (401, 403) and ctx.endpoint.api_key:
            resp = await request(ctx.endpoint, "GET", path, auth="key", timeout_s=HEALTH_TIMEOUT_S)
            evidence.append(resp.evidence())
            evidence.append(f"{path} needs the key: a load balancer's probe must send it")
        if resp.status not in (404, 405):
            return resp
    return None


async def check_health(ctx: CheckContext, check: Check) -> CheckResult:
    evidence: list[str] = []
    health = await _find_health(ctx, evidence)
    if health is not None and health.status is None:
        return check.error(f"GET {health.path} got no answer: {health.error}", evidence)
    path, body = tiny_request(ctx.endpoint)
    gen = await request(ctx.endpoint, "POST", path, json_body=body, timeout_s=GENERATION_TIMEOUT_S)
    evidence.append(gen.evidence())
    if gen.status is None and not (gen.error or "").startswith("timeout"):
        return check.error(f"the 1-token generation got no answer ({gen.error}): the target went away", evidence)
    if _busy(gen):
        return check.error(
            f"the server refused the 1-token generation for load (HTTP {gen.status}): readiness "
            "not judged; run this check when the server is not saturated",
            evidence,
        )
    if gen.status is not None and 400 <= gen.status < 500 and not _not_ready(gen):
        why = f"the 1-token generation was refused (HTTP {gen.status}): check the key and model; readiness not judged"
        return check.error(why, evidence)
    serving = _completion(gen)
    if health is None:
        tried = ", ".join(HEALTH_PATHS)
        if serving:
            return check.result(
                CheckStatus.WARN,
                f"no health route ({tried} all 404): an orchestrator cannot tell a loading replica from a ready one",
                evidence=evidence,
            )
        return check.result(
            CheckStatus.FAIL, f"no health route ({tried}) and the server does not serve", evidence=evidence
        )
    if health.status == 200:
        if serving:
            return _health_agrees(check, health, evidence)
        if _not_ready(gen):
            return check.result(
                CheckStatus.FAIL,
                f"health 200 while not ready: {health.path} answers 200 while "
                f"generation answers {gen.status} (not loaded)",
                evidence=evidence,
            )
        what = f"HTTP {gen.status}" if gen.status is not None else gen.error
        return check.result(
            CheckStatus.FAIL, f"health 200 while not serving: a 1-token generation got {what}", evidence=evidence
        )
    if serving:
        return check.result(
            CheckStatus.WARN,
            f"{health.path} answers {health.status} while generation works: an "
            "orchestrator would keep a serving replica out of rotation",
            evidence=evidence,
        )
    why = f"the server is not serving ({health.path} {health.status}, generation {gen.status or gen.error})"
    return check.error(f"{why}: cannot show that health turns 200 when it serves", evidence)


def _health_agrees(check: Check, health: ProbeResponse, evidence: list[str]) -> CheckResult:
    elapsed_ms = round(health.elapsed_s * 1000, 1)
    limit_ms = PROBE_DEFAULT_TIMEOUT_S * 1000
    if health.elapsed_s > PROBE_DEFAULT_TIMEOUT_S:
        return check.result(
            CheckStatus.WARN,
            f"{health.path} agrees with generation but took {elapsed_ms:g} ms, over "
            "the 1 s default timeout of a Kubernetes probe",
            value=elapsed_ms,
            threshold=limit_ms,
            unit="ms",
            evidence=evidence,
        )
    return check.result(
        CheckStatus.PASS,
        f"{health.path} answers 200 and the server serves",
        value=elapsed_ms,
        threshold=limit_ms,
        unit="ms",
        evidence=evidence,
    )


async def check_metrics(ctx: CheckContext, check: Check) -> CheckResult:
    got = await read_target_metrics(ctx.endpoint, timeout_s=HEALTH_TIMEOUT_S)
    resp = got.response
    evidence = [resp.evidence(excerpt_chars=60)]
    if ctx.endpoint.api_key:
        bare = await request(
            ctx.endpoint, "GET", "/metrics", auth="none", timeout_s=HEALTH_TIMEOUT_S, max_body_bytes=1024
        )
        answer = bare.status if bare.status is not None else bare.error
        evidence.append(f"without the key GET /metrics -> {answer} (exposure is judged by the security checks)")
    if resp.status is None:
        return check.error(got.problem or "GET /metrics got no answer", evidence)
    if resp.status == 404:
        return check.result(
            CheckStatus.FAIL,
            "no /metrics: latency, tokens and queue cannot be watched in production",
            evidence=evidence,
        )
    if resp.status != 200 or got.reading is None:
        if resp.truncated:
            return check.error(got.problem or "GET /metrics was cut off", evidence)
        return check.result(CheckStatus.FAIL, got.problem or f"GET /metrics answered {resp.status}", evidence=evidence)
    reading = got.reading
    if reading.source is None:
        if reading.families == 0:
            return check.result(CheckStatus.FAIL, "/metrics answers 200 with no metrics at all", evidence=evidence)
        return check.result(
            CheckStatus.WARN,
            f"{got.problem}: latency, token and queue metrics could not be identified",
            value=0,
            threshold=len(METRIC_GROUPS),
            unit="metric groups",
            evidence=evidence,
        )
    missing = set(reading.missing())
    present = [g for g, names in METRIC_GROUPS.items() if not missing & set(names)]
    absent = [g for g in METRIC_GROUPS if g not in present]
    evidence.append(f"{reading.families} families in the {reading.source} dialect; found: {', '.join(present) or '-'}")
    if absent:
        return check.result(
            CheckStatus.WARN,
            f"/metrics ({reading.source}) lacks {'; '.join(absent)}",
            value=len(present),
            threshold=len(METRIC_GROUPS),
            unit="metric groups",
            evidence=evidence,
        )
    return check.result(
        CheckStatus.PASS,
        f"/metrics parses ({reading.source}) with latency, token and queue metrics",
        value=len(present),
        threshold=len(METRIC_GROUPS),
        unit="metric groups",
        evidence=evidence,
    )


async def check_metrics_timeline(ctx: CheckContext, check: Check) -> CheckResult:
    timeline = ctx.scratch.get(TIMELINE_KEY)
    if timeline is None:
        return check.skip("no metrics timeline: /metrics is scraped only while the checklist's benchmark runs")
    if not isinstance(timeline, MetricsTimeline):
        return check.error(f"ctx.scratch[{TIMELINE_KEY!r}] is a {type(timeline).__name__}, not a MetricsTimeline")
    if timeline.source is None:
        return check.skip(f"no metrics timeline: {timeline.note or 'the server metrics were not recognised'}")
    evidence = timeline.describe()
    taken = [s for s in timeline.samples if s.error is None]
    if not taken:
        return check.error(f"every one of {len(timeline.samples)} scrapes during the load failed", evidence)
    failed_share = len(timeline.errors) / len(timeline.samples)
    if failed_share > MAX_SCRAPE_FAILURES:
        return check.result(
            CheckStatus.WARN,
            f"{failed_share:.0%} of /metrics scrapes failed during the load: a dashboard would have gaps",
            value=len(taken),
            unit="samples",
            evidence=evidence,
        )
    moved = (timeline.peak("running") or 0) > 0 or (timeline.increase("generation_tokens_total") or 0) > 0
    if not moved:
        return check.result(
            CheckStatus.WARN,
            "the server's metrics did not move during the load: they may "
            "describe another replica (a load balancer in front?)",
            value=len(taken),
            unit="samples",
            evidence=evidence,
        )
    return check.result(
        CheckStatus.PASS,
        f"{len(taken)} /metrics samples taken during the load",
        value=len(taken),
        unit="samples",
        evidence=evidence,
    )


HEALTH = Check(
    "monitoring.health",
    Category.MONITORING,
    "/health answers and reflects readiness",
    check_health,
    reference="Kubernetes readiness probes; vLLM production-stack probes /health",
    remediation="Serve GET /health that answers 200 only once the model can generate (503 while loading), "
    "and point the orchestrator's readiness probe at it",
)
METRICS = Check(
    "monitoring.metrics",
    Category.MONITORING,
    "/metrics has latency, token and queue metrics",
    check_metrics,
    reference="vLLM docs/usage/metrics.md",
    remediation="Expose Prometheus /metrics (vLLM: on by default; llama.cpp: --metrics) with TTFT/E2E histograms, "
    "token counters and running/waiting gauges, and scrape it",
)
METRICS_TIMELINE = Check(
    "monitoring.metrics_timeline",
    Category.MONITORING,
    "/metrics can be followed during load",
    check_metrics_timeline,
    remediation="Make /metrics answer quickly under load, from the replica that serves the traffic",
)

MONITORING_CHECKS: list[Check] = [HEALTH, METRICS, METRICS_TIMELINE]
