"""Reading a server's Prometheus `/metrics` in one vocabulary, whoever served it.

vLLM, SGLang, TGI, llama.cpp's server and Preflight's engine export the same facts under different
names; `DIALECTS` is the one table that says which name means what. Sample names are
as they appear in the exposition text (counters keep `_total`), checked against the
servers' sources:

- vLLM: `vllm/v1/metrics/loggers.py` (`PrometheusStatLogger`). `vllm:kv_cache_usage_perc`
  replaced `vllm:gpu_cache_usage_perc`; both are fractions 0..1 despite "perc". Gauges
  carry `model_name` and `engine` labels, one series per data-parallel engine.
- llama.cpp: `tools/server` (the `/metrics` handler, `--metrics`). Current builds export
  `requests_processing`/`requests_deferred` and the token counters but no KV gauge and
  no latency histograms; older builds also had `llamacpp:kv_cache_usage_ratio`.
- SGLang: `python/sglang/srt/metrics/collector.py` (`--enable-metrics`): `num_running_reqs`,
  `num_queue_reqs`, `token_usage` (KV pool in use, 0..1), the token counters and the TTFT /
  E2E histograms, all prefixed `sglang:`; no preemption counter.
- TGI: the router's `tgi_*` names: `tgi_batch_current_size` (running), `tgi_queue_size`
  (waiting) and per-request histograms; token totals are the `_sum` of
  `tgi_request_input_length` and `tgi_request_generated_tokens`, E2E is
  `tgi_request_duration`; no KV gauge, no TTFT histogram, no preemption counter.
- Preflight: `engine/serving/metrics.py`, vLLM's names with the `preflight:` prefix.

A field a server does not export reads None, never 0. Parsing goes through
`prometheus_client`'s own parser: a hand-written one would accept text Prometheus rejects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from reports.metrics_timeline import MetricsSample, MetricsSource

FIELDS = ("running", "waiting", "kv_cache_usage", "prompt_tokens_total", "generation_tokens_total", "preemptions_total")
HISTOGRAMS = ("ttft_seconds", "e2e_seconds")
MAX_FIELDS = frozenset({"kv_cache_usage"})  # a fraction: the fullest engine, not a sum over engines

# vocabulary name -> the server's sample (counters, gauges) or histogram family names, newest spelling first
DIALECTS: dict[MetricsSource, dict[str, tuple[str, ...]]] = {
    "vllm": {
        "running": ("vllm:num_requests_running",),
        "waiting": ("vllm:num_requests_waiting",),
        "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        "prompt_tokens_total": ("vllm:prompt_tokens_total",),
        "generation_tokens_total": ("vllm:generation_tokens_total",),
        "preemptions_total": ("vllm:num_preemptions_total",),
        "ttft_seconds": ("vllm:time_to_first_token_seconds",),
        "e2e_seconds": ("vllm:e2e_request_latency_seconds",),
    },
    "llamacpp": {
        "running": ("llamacpp:requests_processing",),
        "waiting": ("llamacpp:requests_deferred",),
        "kv_cache_usage": ("llamacpp:kv_cache_usage_ratio",),
        "prompt_tokens_total": ("llamacpp:prompt_tokens_total",),
        "generation_tokens_total": ("llamacpp:tokens_predicted_total",),
        "preemptions_total": (),
        "ttft_seconds": (),
        "e2e_seconds": (),
    },
    "sglang": {
        "running": ("sglang:num_running_reqs",),
        "waiting": ("sglang:num_queue_reqs",),
        "kv_cache_usage": ("sglang:token_usage",),
        "prompt_tokens_total": ("sglang:prompt_tokens_total",),
        "generation_tokens_total": ("sglang:generation_tokens_total",),
        "preemptions_total": (),
        "ttft_seconds": ("sglang:time_to_first_token_seconds",),
        "e2e_seconds": ("sglang:e2e_request_latency_seconds",),
    },
    "tgi": {
        "running": ("tgi_batch_current_size",),
        "waiting": ("tgi_queue_size",),
        "kv_cache_usage": (),
        "prompt_tokens_total": ("tgi_request_input_length_sum",),
        "generation_tokens_total": ("tgi_request_generated_tokens_sum",),
        "preemptions_total": (),
        "ttft_seconds": (),
        "e2e_seconds": ("tgi_request_duration",),
    },
    "preflight": {
        "running": ("preflight:num_requests_running",),
        "waiting": ("preflight:num_requests_waiting",),
        "kv_cache_usage": ("preflight:kv_cache_usage_perc",),
        "prompt_tokens_total": ("preflight:prompt_tokens_total",),
        "generation_tokens_total": ("preflight:generation_tokens_total",),
        "preemptions_total": ("preflight:num_preemptions_total",),
        "ttft_seconds": ("preflight:time_to_first_token_seconds",),
        "e2e_seconds": ("preflight:e2e_request_latency_seconds",),
    },
}


class MetricsParseError(ValueError):
    """The body is not Prometheus text; the message says where the parser gave up."""


@dataclass(frozen=True, slots=True)
class MetricsReading:
    """One `/metrics` body in Preflight's vocabulary, with how much of it was recognised."""

    source: MetricsSource | None
    values: dict[str, float | None] = field(default_factory=dict)  # FIELDS -> value, None: not exported
    histograms: dict[str, bool] = field(default_factory=dict)  # HISTOGRAMS -> exported?
    families: int = 0  # metric families in the body, known or not

    def sample(self, t_s: float) -> MetricsSample:
        return MetricsSample(t_s=t_s, **{name: self.values.get(name) for name in FIELDS})

    def missing(self) -> list[str]:
        """Vocabulary names this server does not export, in table order."""
        gone = [name for name in FIELDS if self.values.get(name) is None]
        return gone + [name for name in HISTOGRAMS if not self.histograms.get(name)]


def parse_samples(text: str) -> tuple[dict[str, list[float]], int]:
    """Sample name -> its values over all label sets, and the family count; MetricsParseError if not Prometheus."""
    samples: dict[str, list[float]] = {}
    families = 0
    try:
        for family in text_string_to_metric_families(text):
            families += 1
            for s in family.samples:
                samples.setdefault(s.name, []).append(float(s.value))
    except (ValueError, TypeError, IndexError, KeyError) as exc:  # what prometheus_client raises on bad text
        raise MetricsParseError(f"not Prometheus text: {type(exc).__name__}: {str(exc)[:160]}") from None
    return samples, families


def detect_source(samples: dict[str, list[float]]) -> MetricsSource | None:
    """The dialect with the most of its names present; None when no known name is there at all."""
    best: MetricsSource | None = None
    best_hits = 0
    for source, names in DIALECTS.items():
        hits = sum(1 for name in FIELDS if any(n in samples for n in names[name]))
        hits += sum(1 for name in HISTOGRAMS if any(f"{n}_count" in samples for n in names[name]))
        if hits > best_hits:
            best, best_hits = source, hits
    return best


def _value(samples: dict[str, list[float]], names: tuple[str, ...], use_max: bool) -> float | None:
    for name in names:
        values = [v for v in samples.get(name, []) if not math.isnan(v)]
        if values:
            return max(values) if use_max else sum(values)
    return None


def read_metrics(text: str) -> MetricsReading:
    """Map a `/metrics` body onto the vocabulary; MetricsParseError if it is not Prometheus text."""
    samples, families = parse_samples(text)
    source = detect_source(samples)
    if source is None:
        return MetricsReading(None, {name: None for name in FIELDS}, {name: False for name in HISTOGRAMS}, families)
    names = DIALECTS[source]
    values = {name: _value(samples, names[name], name in MAX_FIELDS) for name in FIELDS}
    histograms = {name: any(f"{n}_count" in samples for n in names[name]) for name in HISTOGRAMS}
    return MetricsReading(source, values, histograms, families)
