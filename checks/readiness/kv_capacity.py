"""KV capacity against the declared load: can the server hold `concurrency` streams of `context_tokens` each?

Two sources, best first, and the result always says which was used:

1. The target's own /metrics, as scraped during the load into
   `ctx.scratch[TIMELINE_KEY]` (a MetricsTimeline). When the
   server states its pool size (vLLM's `cache_config_info` gives num_gpu_blocks x
   block_size), capacity is that. When it exposes only the usage fraction (vLLM's
   `kv_cache_usage_perc`, our server's `preflight:kv_cache_usage_perc`), capacity is
   estimated from the busiest sample: `running` streams held `usage` of the pool, and
   each held between its prompt and its prompt plus its output (the benchmark's mean
   token counts), so capacity lies in [running x prompt / usage, running x (prompt +
   output) / usage]. Like the latency lines, PASS needs the whole range above the
   requirement, FAIL the whole range below, and WARN is "cannot tell".
2. The plan (`ctx.plan`, the planner's `Plan.to_dict()`): its KV blocks per replica,
   times replicas, for the bundled option when the bundled target runs, else the
   plan's first (recommended) option. A prediction, not a measurement; evidence says so.

Not declared (no --concurrency or no --context-tokens): SKIP. Declared but neither
source available: ERROR, since the operator asked for a figure nobody measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from checks.readiness.check import Check, CheckContext
from checks.readiness.measured import measurement
from checks.readiness.metrics_scrape import TIMELINE_KEY
from reports.check_result import Category, CheckResult, CheckStatus
from reports.metrics_timeline import MetricsTimeline


@dataclass(frozen=True, slots=True)
class KvCapacity:
    """Capacity in tokens, as a range (low == high when known exactly), and where it came from."""

    low_tokens: float
    high_tokens: float
    source: str
    evidence: list[str] = field(default_factory=list)


def capacity_from_metrics(
    timeline: MetricsTimeline | None, mean_prompt_tokens: float | None, mean_output_tokens: float | None
) -> KvCapacity | None:
    """Capacity from /metrics readings (see the module docstring); None when they cannot give one."""
    if timeline is None:
        return None
    readings = [(s.kv_cache_usage, s.running) for s in timeline.samples]
    busy = [(usage, running) for usage, running in readings if usage and running]  # both measured and above 0
    if not busy or not mean_prompt_tokens or mean_output_tokens is None:
        return None
    usage, running = max(busy)
    low = running * mean_prompt_tokens / usage
    high = running * (mean_prompt_tokens + mean_output_tokens) / usage
    return KvCapacity(
        low,
        high,
        "the target's /metrics (peak KV usage during the load)",
        [
            f"peak KV usage {usage:.1%} with {running:g} requests running, of {len(busy)} busy samples",
            f"each held {mean_prompt_tokens:.0f}-{mean_prompt_tokens + mean_output_tokens:.0f} tokens "
            "(benchmark mean prompt, prompt + output)",
        ],
    )


def capacity_from_plan(plan: Mapping[str, Any] | None, bundled: bool) -> KvCapacity | None:
    """Capacity the planner predicted for the option being served; None without a plan or a sized option."""
    if not plan:
        return None
    options = [o for o in plan.get("options") or [] if o.get("memory")]
    if bundled:
        options = [o for o in options if o.get("engine") == "bundled"]
    if not options:
        return None
    option, mem = options[0], options[0]["memory"]
    replicas = option.get("replicas") or 1
    tokens = mem["num_blocks"] * mem["block_size"] * replicas
    model = (plan.get("model") or {}).get("name", "the model")
    return KvCapacity(
        tokens,
        tokens,
        "the plan (predicted, not measured)",
        [
            f"{model}, {option.get('engine')} {option.get('format')}: {mem['num_blocks']} blocks of "
            f"{mem['block_size']} tokens x {replicas} replica(s)",
            f"{mem['kv_bytes_per_token']} KV bytes per token, {mem['kv_budget_bytes'] / 2**30:.2f} GiB KV budget "
            "per device",
        ],
    )


def capacity_status(cap: KvCapacity, required_tokens: int) -> CheckStatus:
    if cap.low_tokens >= required_tokens:
        return CheckStatus.PASS
    return CheckStatus.FAIL if cap.high_tokens < required_tokens else CheckStatus.WARN


def _mean_tokens(records: Sequence[Any]) -> tuple[float | None, float | None]:
    ok = [r for r in records if r.ok and r.input_tokens is not None and r.output_tokens is not None]
    if not ok:
        return None, None
    return sum(r.input_tokens for r in ok) / len(ok), sum(r.output_tokens for r in ok) / len(ok)


async def _kv_capacity(ctx: CheckContext, check: Check) -> CheckResult:
    conc, context = ctx.declared.concurrency, ctx.declared.context_tokens
    if conc is None or context is None:
        return check.skip("no load declared: pass --concurrency and --context-tokens to check KV capacity")
    required = conc * context
    m = measurement(ctx)
    prompt, output = _mean_tokens(m.records) if m is not None else (None, None)
    cap = capacity_from_metrics(ctx.scratch.get(TIMELINE_KEY), prompt, output)
    if cap is None:
        cap = capacity_from_plan(ctx.plan, ctx.bundled is not None)
    if cap is None:
        return check.error(
            "no KV figures: the target's /metrics gave no KV usage during the load and no plan was "
            "given; run the planner for this deployment or expose KV usage on /metrics"
        )
    status = capacity_status(cap, required)
    shown = (
        f"{cap.low_tokens:,.0f}"
        if cap.low_tokens == cap.high_tokens
        else f"{cap.low_tokens:,.0f}-{cap.high_tokens:,.0f}"
    )
    verdict = {
        CheckStatus.PASS: "enough",
        CheckStatus.FAIL: "not enough",
        CheckStatus.WARN: "cannot tell from the usage fraction alone",
    }[status]
    return check.result(
        status,
        f"KV capacity {shown} tokens for {conc} x {context} = {required:,} tokens: {verdict} (from {cap.source})",
        value=cap.low_tokens,
        threshold=required,
        unit="tokens",
        evidence=[f"source: {cap.source}", *cap.evidence],
    )


KV_CAPACITY = Check(
    "resources.kv_capacity",
    Category.RESOURCES,
    "KV cache holds the declared concurrency x context",
    _kv_capacity,
    remediation="Give the KV cache more memory (higher gpu_memory_utilization, lower-bit weights or KV), add "
    "replicas, or lower the concurrency or context the deployment promises.",
)
